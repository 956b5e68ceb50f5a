"""kvprobe.engine.server.client against the real llama-server on the tiny GGUF: the native API,
teacher forcing checked against in-process llama.cpp, the server's own errors, addresses that
are no llama-server, and the real server's answers altered by a proxy one field at a time
(what is tested is the client's distrust of a real answer, not a stand-in's)."""

from __future__ import annotations

import http.client
import http.server
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import ContextSettings
from kvprobe.engine.llamacpp.model import Model
from kvprobe.engine.server.client import UNDERFLOW_BOUND, ServerClient, ServerError, parse_url, strict_json
from kvprobe.engine.server.process import ServerProcess, free_port
from tests.helpers import HANG_S, assert_one_line_server_error

N_VOCAB = 412  # the tiny model's vocabulary
BYTE_TOKEN = 200  # <0xC5>: alone, an incomplete UTF-8 sequence (the server drops its probabilities)
FIRST_TEXT_TOKEN = 259  # after <unk>, <s>, </s> and the 256 byte tokens


@pytest.fixture(scope="module")
def server(
    llama_server: Path, tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    args = ["-m", str(tiny_model_path), "-c", "512", "-t", "1", "-np", "1", "-lv", "4"]
    with ServerProcess(llama_server, args, log_path=log, startup_timeout=120) as proc:
        yield proc


@pytest.fixture(scope="module")
def prompt(server: ServerProcess) -> list[int]:
    return [1, *server.client.tokenize("the number of")]


def in_process_logprobs(model: Model, tokens: list[int]) -> np.ndarray:
    """kvprobe's in-process log-softmax (float64) of the next token after `tokens`, decoded as
    the server decodes a first request: the whole prompt in one batch, flash attention on."""
    settings = ContextSettings(n_ctx=512, chunk=512, n_threads=1, flash_attn=True, attn_rotation=True)
    with model.context(CacheConfig("f16", "f16"), settings) as ctx:
        row = ctx.feed_logits(tokens)[-1].astype(np.float64)
    top = float(row.max())
    out: np.ndarray = row - (top + math.log(float(np.exp(row - top).sum())))
    return out


# --- the real server -----------------------------------------------------------------------------


def test_tokenize_detokenize_template(server: ServerProcess) -> None:
    client = server.client
    assert client.tokenize("<s>") != [1]  # not parsed as the control token by default ...
    assert client.tokenize("<s>", parse_special=True) == [1]  # ... only when asked
    assert client.tokenize("the", add_special=True)[0] == 1
    assert client.detokenize(client.tokenize("the number is")) == " the number is"
    text = client.apply_template([{"role": "user", "content": "hi"}])
    assert text is not None
    assert text.endswith("<|im_start|>assistant\n")  # the server's ChatML fallback: no template in the file
    assert "hi" in text


def test_tokenizer_matches_in_process(server: ServerProcess, tiny_model: Model) -> None:
    text = "The number of the 42 is and of, the Number! x\ny z"
    assert server.client.tokenize(text) == tiny_model.tokenize(text)


def test_next_token_and_teacher_forcing_match_in_process(
    server: ServerProcess, tiny_model: Model, prompt: list[int]
) -> None:
    client = server.client
    exact = in_process_logprobs(tiny_model, prompt)
    top = client.next_token(prompt, 5)
    assert top.sampled_id == top.top_ids[0] == int(np.argmax(exact))
    assert np.abs(np.array(top.top_logprobs) - exact[list(top.top_ids)]).max() < 1e-4
    assert client.last_request["n_probs"] == 5
    assert client.last_request["cache_prompt"] is True
    assert client.last_request["samplers"] == ["temperature"]
    # a token far outside the top 5: logit_bias forces it, its log-prob is over the full vocabulary
    rare = FIRST_TEXT_TOKEN + int(np.argmin(exact[FIRST_TEXT_TOKEN:]))
    forced = client.next_token(prompt, 5, force=rare)
    assert forced.sampled_id == rare
    assert rare not in forced.top_ids
    assert forced.sampled_logprob is not None
    assert abs(forced.sampled_logprob - exact[rare]) < 1e-4
    assert forced.top_ids == top.top_ids  # the top n are from before sampling: logit_bias leaves them
    assert not forced.retried


def test_forced_incomplete_utf8_token_is_a_bound_or_exact(
    server: ServerProcess, tiny_model: Model, prompt: list[int]
) -> None:
    client = server.client
    exact = in_process_logprobs(tiny_model, prompt)
    small = client.next_token(prompt, 3, force=BYTE_TOKEN)
    assert small.retried
    assert small.sampled_id == BYTE_TOKEN
    if BYTE_TOKEN in small.top_ids:
        assert small.sampled_logprob is not None
    else:
        assert small.sampled_logprob is None
        assert exact[BYTE_TOKEN] <= small.sampled_bound + 1e-4
    full = client.next_token(prompt, N_VOCAB, force=BYTE_TOKEN)
    assert full.sampled_logprob is not None
    assert abs(full.sampled_logprob - exact[BYTE_TOKEN]) < 1e-4


def test_generate_is_greedy_and_recorded(server: ServerProcess, prompt: list[int]) -> None:
    client = server.client
    out = client.generate(prompt, 8)
    assert 0 < len(out.tokens) <= 8
    assert out.stop_type in ("limit", "eos")
    assert client.last_request["samplers"] == ["temperature"]
    assert client.last_request["n_predict"] == 8
    # greedy: each generated token is the argmax after the tokens before it
    seq = list(prompt)
    for tok in out.tokens[:3]:
        assert client.next_token(seq, 1).sampled_id == tok
        seq.append(tok)


def test_prompt_beyond_context_and_invalid_tokens(server: ServerProcess) -> None:
    client = server.client
    host = server.url.split("//")[1]
    with pytest.raises(ServerError) as exc:
        client.next_token([5] * 600, 1)
    assert_one_line_server_error(str(exc.value), host, "exceed_context_size_error", "larger -c")
    with pytest.raises(ServerError) as exc:
        client.next_token([1, N_VOCAB + 5], 1)
    assert_one_line_server_error(str(exc.value), "HTTP 400", "invalid tokens")
    with pytest.raises(ServerError) as exc:  # the server's own HTTP 500
        client.detokenize([N_VOCAB + 5])
    assert_one_line_server_error(str(exc.value), "/detokenize answered HTTP 500", "check the server's log")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        client.next_token([1, 5], 1, force=N_VOCAB)


# --- addresses that are no llama-server ----------------------------------------------------------


def test_unreachable_url() -> None:
    port = free_port()
    with pytest.raises(ServerError) as exc:
        ServerClient(f"http://127.0.0.1:{port}", timeout=5).health()
    assert_one_line_server_error(str(exc.value), f"127.0.0.1:{port}", "connection refused")


def test_urls_loopback_only_and_no_credentials_shown() -> None:
    assert parse_url("http://localhost:8080").port == 8080
    assert parse_url("http://[::1]:8080/").display == "http://[::1]:8080"
    with pytest.raises(ServerError) as exc:
        parse_url("http://user:s3cret@10.1.2.3:8080")
    text = assert_one_line_server_error(str(exc.value), "10.1.2.3", "loopback")
    assert "s3cret" not in text
    assert "user" not in text
    remote = parse_url("http://user:s3cret@10.1.2.3:8080", allow_remote=True)
    assert "s3cret" not in remote.display
    assert "s3cret" not in repr(remote)
    assert remote.auth is not None
    assert remote.auth.startswith("Basic ")
    for bad in (
        "ftp://127.0.0.1:1",
        "http://127.0.0.1:8080/?x=1",
        "127.0.0.1:8080",
        "http://127.0.0.1:99999",
    ):
        with pytest.raises(ServerError) as exc:
            parse_url(bad)
        assert_one_line_server_error(str(exc.value))
    port = free_port()
    with pytest.raises(ServerError) as exc:
        ServerClient(f"http://bob:hunter2@127.0.0.1:{port}", timeout=5).props()
    assert "hunter2" not in assert_one_line_server_error(str(exc.value), f"127.0.0.1:{port}")


def test_strict_json() -> None:
    assert strict_json(b'{"a": [1, -2.5e3]}') == {"a": [1, -2500.0]}
    for text, why in [
        (b'{"a": NaN}', "non-finite number NaN"),
        (b'{"a": -Infinity}', "non-finite number -Infinity"),
        (b'{"a": 1e400}', "overflows"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
    ]:
        with pytest.raises(ValueError, match=why):
            strict_json(text)


def test_port_with_another_http_server(tmp_path: Path) -> None:
    port = free_port()
    other = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        client = ServerClient(f"http://127.0.0.1:{port}", timeout=5)
        with pytest.raises(ServerError) as exc:
            client.health()
        assert_one_line_server_error(str(exc.value), f"127.0.0.1:{port}", "llama-server's")
        with pytest.raises(ServerError) as exc:
            client.next_token([1, 2], 1)
        assert_one_line_server_error(str(exc.value), "HTTP 404 with HTML")
    finally:
        other.kill()
        other.wait()


def raw_tcp_server(reply: bytes | None, drip: float = 0.0) -> tuple[socket.socket, int]:
    """A listener that answers each connection with `reply` (None: says nothing; `drip`: a byte
    every `drip` seconds) and closes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                try:
                    if reply is None:
                        time.sleep(3)
                    elif drip:
                        for i in range(len(reply)):
                            conn.sendall(reply[i : i + 1])
                            time.sleep(drip)
                    else:
                        conn.sendall(reply)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize(
    ("reply", "drip", "expected"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", 0.0, "no HTTP answer"),
        (b"", 0.0, "no HTTP answer"),
        (None, 0.0, "no full answer within 1 s"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Drip: 1\r\n" * 50, 0.05, "no full answer within 1 s"),
    ],
    ids=["ssh", "closes", "silent", "drips-headers"],
)
def test_port_that_does_not_speak_http(reply: bytes | None, drip: float, expected: str) -> None:
    sock, port = raw_tcp_server(reply, drip)
    try:
        with pytest.raises(ServerError) as exc:
            ServerClient(f"http://127.0.0.1:{port}", timeout=1).health(timeout=1)
        assert_one_line_server_error(str(exc.value), f"127.0.0.1:{port}", expected)
    finally:
        sock.close()


# --- the real server's answers, altered ----------------------------------------------------------

Handler = http.server.BaseHTTPRequestHandler
Reply = Callable[[Handler], None]  # writes the altered answer
Lie = Callable[[int, bytes], Reply]  # the real server's status and body -> what the proxy sends


def send(body: bytes, status: int = 200, length: int | None = None) -> Reply:
    def reply(handler: Handler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        handler.wfile.write(body)

    return reply


def stream(body: bytes, piece: int, pause: float = 0.0) -> Reply:
    """`body` without a Content-Length, `piece` bytes at a time, `pause` seconds apart."""

    def reply(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        try:
            for i in range(0, len(body), piece):
                handler.wfile.write(body[i : i + piece])
                handler.wfile.flush()
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass

    return reply


class LyingProxy:
    """An HTTP proxy in front of the real llama-server: every request reaches the server, and
    the server's answer to `lie_path` (/completion) goes back through `lie` (None: unchanged)."""

    def __init__(self, upstream: str):
        self.upstream = parse_url(upstream)
        self.lie: Lie | None = None
        self.lie_path = "/completion"
        proxy = self

        class Forward(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self, None)

            def do_POST(self) -> None:
                proxy.forward(self, self.rfile.read(int(self.headers.get("Content-Length", "0"))))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def forward(self, handler: Handler, body: bytes | None) -> None:
        conn = http.client.HTTPConnection(self.upstream.host, self.upstream.port, timeout=HANG_S)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(handler.command, handler.path, body=body, headers=headers)
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
        finally:
            conn.close()
        lie = self.lie if handler.path == self.lie_path else None
        (lie(status, data) if lie else send(data, status))(handler)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def proxy(server: ServerProcess) -> Iterator[LyingProxy]:
    found = LyingProxy(server.url)
    yield found
    found.close()


def field(change: Callable[[dict[str, Any]], object]) -> Lie:
    """The real answer with `change` applied to its JSON."""

    def lie(status: int, body: bytes) -> Reply:
        answer = json.loads(body)
        change(answer)
        return send(json.dumps(answer).encode(), status)

    return lie


def text(change: Callable[[bytes], bytes]) -> Lie:
    """The real answer's bytes, changed."""
    return lambda status, body: send(change(body), status)


def top(answer: dict[str, Any]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = answer["completion_probabilities"][0]["top_logprobs"]
    return entries


def first_logprob(replacement: bytes) -> Callable[[bytes], bytes]:
    return lambda body: re.sub(rb'("logprob":\s*)-?[0-9.eE+-]+', rb"\g<1>" + replacement, body, count=1)


def _set_all_top(answer: dict[str, Any]) -> None:
    for entry in top(answer):
        entry["logprob"] = -0.1


def _extra_entry(answer: dict[str, Any]) -> None:
    last = top(answer)[-1]
    taken = {e["id"] for e in top(answer)}
    new_id = next(t for t in range(FIRST_TEXT_TOKEN, N_VOCAB) if t not in taken)
    top(answer).append({**last, "id": new_id, "logprob": last["logprob"] - 1.0})


def _second_sampled(answer: dict[str, Any]) -> None:
    """Claims the second most likely token was sampled greedily (ids and value consistent)."""
    second = top(answer)[1]
    answer["tokens"] = [second["id"]]
    answer["completion_probabilities"][0].update(id=second["id"], logprob=second["logprob"])


def _put(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Sets the field at `path` (keys and list indices, dotted); a callable value gets the answer."""

    def change(answer: dict[str, Any]) -> None:
        target: Any = answer
        keys = path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        last = int(keys[-1]) if keys[-1].isdigit() else keys[-1]
        target[last] = value(answer) if callable(value) else value

    return change


LOADING = b'{"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}'
BOOM = b'{"error": {"code": 500, "message": "boom", "type": "server_error"}}'

# Each: the alteration of the real answer to `next_token(prompt, 3)`, and what the error must say.
LIES: dict[str, tuple[Lie, str]] = {
    "malformed": (text(lambda b: b[: len(b) // 2]), "not valid JSON"),
    "html": (text(lambda b: b"<html><body>" + b + b"</body></html>"), "with HTML"),
    "truncated": (lambda s, b: send(b, s, length=len(b) + 400), "no HTTP answer (IncompleteRead)"),
    "huge_declared": (lambda s, b: send(b, s, length=10**12), "over the 1048576-byte cap"),
    "huge_streamed": (lambda s, b: stream(b + b" " * (3 << 20), 65536), "more than the 1048576-byte cap"),
    "slow_drip": (lambda s, b: stream(b, 1, pause=0.3), "no full answer within 2 s"),
    "nan": (text(first_logprob(b"NaN")), "non-finite number NaN"),
    "overflow": (text(first_logprob(b"-1e400")), "overflows"),
    "duplicate_key": (text(lambda b: b.rstrip()[:-1] + b', "tokens": [8]}'), "duplicate key"),
    "not_object": (text(lambda b: b"[" + b + b"]"), "not an object"),
    "out_of_vocab_top": (
        field(_put("completion_probabilities.0.top_logprobs.1.id", 99999)),
        "outside [0, 412)",
    ),
    "out_of_vocab_sampled": (field(_put("tokens", [-1])), "outside [0, 412)"),
    "too_many_probs": (field(_extra_entry), "4 top_logprobs for n_probs 3"),
    "too_few_probs": (field(lambda a: top(a).pop()), "only 2 top_logprobs for n_probs 3"),
    "positive_logprob": (field(_put("completion_probabilities.0.top_logprobs.2.logprob", 0.5)), "outside"),
    "string_logprob": (field(_put("completion_probabilities.0.logprob", "-1")), "not a number"),
    "bool_id": (field(_put("tokens", [True])), "not an integer"),
    "sum_over_one": (field(_set_all_top), "sum to"),
    "unsorted": (
        field(_put("completion_probabilities.0.top_logprobs.0.logprob", lambda a: top(a)[-1]["logprob"] - 5)),
        "decreasing",
    ),
    "sampled_mismatch": (
        field(_put("completion_probabilities.0.id", lambda a: top(a)[1]["id"])),
        "differs from the sampled",
    ),
    "not_greedy": (field(_second_sampled), "greedy sampling did not pick the most likely token"),
    "missing_timings": (field(lambda a: a.pop("timings")), "'timings' missing"),
    "negative_timing": (field(_put("timings.prompt_ms", -3.0)), "prompt_ms"),
    "two_tokens": (field(_put("tokens", lambda a: a["tokens"] * 2)), "2 tokens for n_predict 1"),
    "other_model": (field(_put("model", "someone-else")), "another server"),
    "error_status": (lambda s, b: send(BOOM, 500), "HTTP 500"),
    "loading": (lambda s, b: send(LOADING, 503), "wait until the model has loaded"),
}


def client_via(proxy: LyingProxy, server: ServerProcess, timeout: float = 30.0) -> ServerClient:
    return ServerClient(proxy.url, timeout=timeout, max_bytes=1 << 20, expect_model=server.alias)


def test_the_proxy_passes_the_truth(proxy: LyingProxy, server: ServerProcess, prompt: list[int]) -> None:
    proxy.lie = None
    through = client_via(proxy, server).next_token(prompt, 3)
    direct = server.client.next_token(prompt, 3)
    assert not through.retried
    assert (through.top_ids, through.top_logprobs) == (direct.top_ids, direct.top_logprobs)


def test_underflowed_forced_token_is_a_bound(
    proxy: LyingProxy, server: ServerProcess, prompt: list[int]
) -> None:
    """The server writes float32's lowest value for log(0): the true value is only bounded."""
    full = server.client.next_token(prompt, N_VOCAB)
    rare = next(t for t in reversed(full.top_ids) if t >= FIRST_TEXT_TOKEN)
    proxy.lie = field(_put("completion_probabilities.0.logprob", -3.4028234663852886e38))
    out = client_via(proxy, server).next_token(prompt, 3, force=rare)
    assert out.sampled_id == rare
    assert out.sampled_logprob is None
    assert out.sampled_bound == UNDERFLOW_BOUND


@pytest.mark.parametrize(
    ("lie", "expected"),
    [
        (field(_put("tokens", lambda a: [top(a)[0]["id"]])), "sampled where"),  # logit_bias ignored
        (field(_put("completion_probabilities.0.logprob", 0.0)), "more likely than the last of the top n"),
    ],
    ids=["force_ignored", "forced_too_likely"],
)
def test_lying_about_a_forced_token(
    proxy: LyingProxy, server: ServerProcess, prompt: list[int], lie: Lie, expected: str
) -> None:
    full = server.client.next_token(prompt, N_VOCAB)
    rare = next(t for t in reversed(full.top_ids) if t >= FIRST_TEXT_TOKEN)
    proxy.lie = lie
    with pytest.raises(ServerError) as exc:
        client_via(proxy, server).next_token(prompt, 3, force=rare)
    assert_one_line_server_error(str(exc.value), proxy.url.split("//")[1], expected)


@pytest.mark.parametrize("name", sorted(LIES))
def test_lying_server(proxy: LyingProxy, server: ServerProcess, prompt: list[int], name: str) -> None:
    lie, expected = LIES[name]
    proxy.lie = lie
    client = client_via(proxy, server, timeout=2.0 if name == "slow_drip" else 30.0)
    started = time.monotonic()
    with pytest.raises(ServerError) as exc:
        client.next_token(prompt, 3)
    assert time.monotonic() - started < HANG_S  # bounded by the request's deadline, never a hang
    assert_one_line_server_error(str(exc.value), proxy.url.split("//")[1], expected)


def test_a_build_without_apply_template_renders_nothing(proxy: LyingProxy) -> None:
    """An older llama-server answers /apply-template with its 404: no renderer (kvprobe's own
    rendering of the template stands), not a failed run."""
    not_found = b'{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}'
    proxy.lie, proxy.lie_path = (lambda status, body: send(not_found, 404)), "/apply-template"
    try:
        client = ServerClient(parse_url(proxy.url))
        assert client.apply_template([{"role": "user", "content": "hi"}]) is None
    finally:
        proxy.lie, proxy.lie_path = None, "/completion"
