"""A llama-server reached over HTTP (standard library only).

- `ServerClient` speaks the server's native API (/health, /props, /v1/models, /tokenize,
  /detokenize, /apply-template, /completion) with per-request deadlines, a cap on the bytes read,
  strict JSON (NaN, Infinity and overflowing numbers refused) and validation of every field used.

Every failure is a `ServerError` with a one-line message that names the server (its URL without
credentials) and the fix. Facts this relies on are measured in docs/server-notes.md.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import itertools
import json
import math
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kvprobe.infra.errors import EngineFailure

__all__ = [
    "Generated",
    "ModelInfo",
    "NextToken",
    "Props",
    "ServerClient",
    "ServerError",
    "ServerURL",
    "Timings",
    "parse_url",
    "strict_json",
]

# The server writes log(p) as float32's lowest value when p underflowed to 0 (JSON has no -inf):
# the true log-prob is then below about -103 (log of the smallest float32 denormal is -103.28).
UNDERFLOW_SENTINEL = -1e30
UNDERFLOW_BOUND = -100.0
# Log-probs are computed in float32: a top-n list sums to 1 within this, and the sampled token's
# value equals its top-n entry within LOGPROB_TOLERANCE (measured: 2.4e-7 apart).
PROB_SUM_TOLERANCE = 1e-3
LOGPROB_TOLERANCE = 1e-4
FORCE_BIAS = 1e9  # added by the server's logit_bias sampler: the forced token wins greedy sampling
DEFAULT_MAX_BYTES = 64 << 20  # n_probs 1000 is ~100 kB per token; 64 MiB is far beyond any answer used
FIX_PORT = "check that this port is llama-server's"
FIX_BINARY = "give the path of a llama-server binary"
FIX_CAP = "ask for fewer probabilities (n_probs), or check what answers on this port"
FIX_BUILD = "this server's answers cannot be trusted: check its build (llama-server --version)"
_VERSION_LINE = re.compile(r"version: (\S+) \(build (\d+), commit (\w+)\)")
_ERROR_LINE = re.compile(r"\berror\b|failed|unsupported|invalid|couldn't|exiting|abort", re.IGNORECASE)
_T = TypeVar("_T")
_STOP_TYPES = frozenset({"eos", "limit", "word", "none"})
_RESPONSE_FIELDS = (
    "model",
    "tokens",
    "completion_probabilities",
    "timings",
    "stop_type",
    "truncated",
    "tokens_predicted",
    "tokens_evaluated",
)


class ServerError(EngineFailure):
    """Any failure to reach, start or believe a llama-server: one line, naming it and the fix."""

    def __init__(self, where: str, what: str, fix: str):
        line = f"llama-server at {where}: {what}; {fix}"
        super().__init__(" ".join(line.split()))


# --- URLs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerURL:
    """A server's address. `display` never holds credentials; `auth` is the header they become."""

    scheme: str
    host: str
    port: int
    base_path: str
    auth: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_url(url: str, *, allow_remote: bool = False, api_key: str | None = None) -> ServerURL:
    """Check a server URL: http(s), a host, loopback unless `allow_remote`, no query or fragment.
    A user:password in it becomes HTTP Basic auth (an API key, `api_key`, a Bearer header); neither
    ever appears in a message."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
        host = parts.hostname or ""
    except ValueError as exc:
        raise ServerError(_redact(url), f"not a URL ({exc})", "give one like http://127.0.0.1:8080") from None
    where = _redact(url)
    if parts.scheme not in ("http", "https") or not host:
        raise ServerError(where, "not an http(s) URL with a host", "give one like http://127.0.0.1:8080")
    if parts.query or parts.fragment:
        raise ServerError(where, "the URL has a query or fragment", "give the server's base URL only")
    if not allow_remote and not _is_loopback(host):
        raise ServerError(
            where,
            "the host is not a loopback address",
            "reach it through an SSH tunnel (ssh -L 8080:127.0.0.1:8080 HOST) and give the local URL",
        )
    auth = None
    if api_key:
        auth = f"Bearer {api_key}"
    elif parts.username is not None:
        import base64

        pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
    default_port = 443 if parts.scheme == "https" else 80
    return ServerURL(parts.scheme, host, port or default_port, parts.path.rstrip("/"), auth)


def _redact(url: str) -> str:
    """`url` with any user:password@ removed (for messages about a URL that did not parse)."""
    return re.sub(r"(?<=//)[^/@]*@", "", url.strip())[:200]


# --- strict JSON and field checks --------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} overflows")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def strict_json(data: bytes) -> Any:
    """JSON as RFC 8259 has it: NaN/Infinity, overflowing numbers and duplicate keys refused."""
    return json.loads(
        data.decode("utf-8"),
        parse_constant=_refuse_constant,
        parse_float=_finite_float,
        object_pairs_hook=_no_duplicates,
    )


class _Bad(Exception):
    """A response field that fails a check (turned into a ServerError by the client)."""


def _get(obj: Mapping[str, Any], key: str) -> Any:
    if key not in obj:
        raise _Bad(f"'{key}' missing")
    return obj[key]


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{what} is not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Bad(f"{what} is not a list")
    return value


def _int(value: Any, what: str, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"{what} is not an integer")
    if value < lo or (hi is not None and value >= hi):
        raise _Bad(f"{what} = {value} is outside [{lo}, {hi if hi is not None else 'inf'})")
    return value


def _num(value: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"{what} is not a number")
    if not lo <= value <= hi:
        raise _Bad(f"{what} = {value:.6g} is outside [{lo:g}, {hi:g}]")
    return float(value)


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{what} is not a string")
    return value


# --- what the client returns -------------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    """The server's own timings of one request (prompt: the tokens it evaluated, not cached)."""

    cache_n: int
    prompt_n: int
    prompt_ms: float
    prompt_per_second: float
    predicted_n: int
    predicted_ms: float
    predicted_per_second: float


@dataclass(frozen=True)
class NextToken:
    """The next-token distribution after a prompt, as the server reports it.

    `top_ids`/`top_logprobs`: the n most likely tokens over the full vocabulary, before sampling
    (unchanged by logit_bias). `sampled_id`: the token the server sampled: the forced one if a
    token was forced, else the argmax. `sampled_logprob`: its log-prob over the full vocabulary,
    or None where the server could not report it (it underflowed float32, or the token's text is
    an incomplete UTF-8 sequence and lies outside the top n); `sampled_bound` is then an upper
    bound of it (else equal to it). `retried`: the answer needed a second request (incomplete
    UTF-8: see NOTES.md), whose repeated prompt the server re-evaluates as a one-token batch:
    its values come from another batch shape than a first request's."""

    top_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]
    sampled_id: int
    sampled_logprob: float | None
    sampled_bound: float
    timings: Timings
    request: dict[str, Any]
    retried: bool = False


@dataclass(frozen=True)
class Generated:
    """A greedy continuation: its tokens (without the end-of-generation token that stopped it)."""

    tokens: tuple[int, ...]
    stop_type: str
    truncated: bool
    timings: Timings
    request: dict[str, Any]


@dataclass(frozen=True)
class Props:
    """What /props says of the server (`raw` holds all of it, for the result file)."""

    build_info: str
    model_path: str
    model_alias: str
    n_ctx: int
    total_slots: int
    chat_template: str
    bos_token: str
    eos_token: str
    raw: dict[str, Any]


@dataclass(frozen=True)
class ModelInfo:
    """The model's size facts from /v1/models (where /props has no vocabulary size)."""

    model_id: str
    n_vocab: int
    n_ctx_train: int
    n_params: int
    size: int


# --- the client ----------------------------------------------------------------------------------


class ServerClient:
    """One llama-server. Requests are sequential (one connection each, never through a proxy)."""

    def __init__(
        self,
        url: str | ServerURL,
        *,
        timeout: float = 600.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        allow_remote: bool = False,
        api_key: str | None = None,
        expect_model: str | None = None,
        on_failure: Callable[[], str] | None = None,
    ):
        """`timeout`: seconds for a whole request (connect, send, wait, read). `expect_model`: the
        name every /completion answer must carry (a spawned server's unique --alias: an answer
        from any other server is refused). `on_failure` adds a note to every error (a spawned
        server's exit status and log)."""
        self.url = (
            url if isinstance(url, ServerURL) else parse_url(url, allow_remote=allow_remote, api_key=api_key)
        )
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.expect_model = expect_model
        self.on_failure = on_failure
        self.last_request: dict[str, Any] = {}
        self._n_vocab: int | None = None
        self._safe_token: int | None = None

    # transport ----------------------------------------------------------------------------
    def _error(self, what: str, fix: str) -> ServerError:
        note = self.on_failure() if self.on_failure else ""
        return ServerError(self.url.display, f"{what}{f' ({note})' if note else ''}", fix)

    def _connect(self, deadline: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        return cls(self.url.host, self.url.port, timeout=max(0.01, deadline - time.monotonic()))

    def _read_body(
        self, resp: http.client.HTTPResponse, conn: http.client.HTTPConnection, deadline: float
    ) -> bytes:
        length = resp.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            raise self._error(f"answered {int(length)} bytes, over the {self.max_bytes}-byte cap", FIX_CAP)
        chunks: list[bytes] = []
        total = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            chunk = resp.read1(65536)
            if not chunk:
                if length is not None and length.strip().isdigit() and total != int(length):
                    raise http.client.IncompleteRead(b"", int(length) - total)
                return b"".join(chunks)
            total += len(chunk)
            if total > self.max_bytes:
                raise self._error(f"sent more than the {self.max_bytes}-byte cap", FIX_CAP)
            chunks.append(chunk)

    def _http(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None
    ) -> tuple[int, bytes]:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        headers = {"Accept": "application/json", "Connection": "close"}
        payload = None
        if body is not None:
            payload = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if self.url.auth:
            headers["Authorization"] = self.url.auth
        conn = self._connect(deadline)
        # per-operation socket timeouts do not bound a server that drips its headers a byte at a
        # time: a watchdog shuts the socket at the deadline
        watchdog = threading.Timer(max(0.01, deadline - time.monotonic()), _shut, [conn])
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request(method, self.url.base_path + path, body=payload, headers=headers)
            if conn.sock is not None:
                conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
            resp = conn.getresponse()
            return resp.status, self._read_body(resp, conn, deadline)
        except ServerError:
            raise
        except (TimeoutError, http.client.HTTPException, ConnectionError, OSError) as exc:
            if time.monotonic() < deadline and not isinstance(exc, TimeoutError):
                raise self._transport_error(method, path, exc) from None
            limit = timeout if timeout is not None else self.timeout
            raise self._error(
                f"{method} {path} got no full answer within {limit:g} s",
                "the server is stalled or overloaded: check its log, or raise the request timeout",
            ) from None
        finally:
            watchdog.cancel()
            conn.close()

    def _transport_error(self, method: str, path: str, exc: BaseException) -> ServerError:
        if isinstance(exc, ConnectionRefusedError):
            return self._error(
                "nothing listens there (connection refused)",
                "start llama-server, or give the URL it prints ('listening on ...')",
            )
        if isinstance(exc, (http.client.HTTPException, ConnectionError, _ssl_errors())):
            return self._error(
                f"{method} {path} got no HTTP answer ({type(exc).__name__})",
                f"{FIX_PORT} (not another protocol or a dying server)",
            )
        strerror = exc.strerror if isinstance(exc, OSError) else None
        return self._error(
            f"cannot be reached ({strerror or type(exc).__name__})",
            "check the host and port, and that the server is running",
        )

    def _json(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, dict[str, Any]]:
        status, data = self._http(method, path, body, timeout)
        try:
            parsed = strict_json(data)
        except (ValueError, UnicodeDecodeError) as exc:
            kind = "HTML" if data.lstrip()[:1] == b"<" else "text that is not valid JSON"
            if status not in ok:
                raise self._error(
                    f"{method} {path} answered HTTP {status} with {kind}, not llama-server's JSON", FIX_PORT
                ) from None
            raise self._error(
                f"{method} {path} answered HTTP {status} with {kind} ({_short(exc)})",
                f"{FIX_PORT}, and that its build is not broken",
            ) from None
        if not isinstance(parsed, dict):
            raise self._error(
                f"{method} {path} answered HTTP {status} with JSON that is not an object", FIX_PORT
            )
        if status not in ok:
            raise self._status_error(method, path, status, parsed)
        return status, parsed

    def _status_error(self, method: str, path: str, status: int, parsed: dict[str, Any]) -> ServerError:
        err = parsed.get("error")
        message = _short(err.get("message", "")) if isinstance(err, dict) else ""
        kind = err.get("type", "") if isinstance(err, dict) else ""
        if status == 503:
            fix = "wait until the model has loaded (GET /health answers 200)"
        elif kind == "exceed_context_size_error":
            fix = "start the server with a larger -c (context size), or use a shorter context"
        elif status == 404:
            fix = f"{FIX_PORT}, and that its build has this endpoint"
        elif status == 401:
            fix = "give the server's API key"
        else:
            fix = "check the server's log; a build this old or new may need another request shape"
        detail = f": {kind} {message}" if (kind or message) else ""
        return self._error(f"{method} {path} answered HTTP {status}{detail}", fix)

    def _checked(self, path: str, check: Callable[[], _T]) -> _T:
        try:
            return check()
        except _Bad as exc:
            raise self._error(f"{path} answered a wrong value: {exc}", FIX_BUILD) from None

    # endpoints ------------------------------------------------------------------------------
    def health(self, timeout: float = 10.0) -> bool:
        """True when the model is loaded, False while it loads (503); an error otherwise."""
        status, body = self._json("GET", "/health", timeout=timeout, ok=(200, 503))
        if status == 503:
            return False
        return self._checked("/health", lambda: _str(_get(body, "status"), "status") == "ok")

    def props(self) -> Props:
        _, body = self._json("GET", "/props", timeout=min(self.timeout, 30.0))

        def check() -> Props:
            settings = _obj(_get(body, "default_generation_settings"), "default_generation_settings")
            return Props(
                build_info=_str(body.get("build_info", ""), "build_info"),
                model_path=_str(_get(body, "model_path"), "model_path"),
                model_alias=_str(body.get("model_alias", ""), "model_alias"),
                n_ctx=_int(_get(settings, "n_ctx"), "n_ctx", 1),
                total_slots=_int(_get(body, "total_slots"), "total_slots", 1),
                chat_template=_str(body.get("chat_template", ""), "chat_template"),
                bos_token=_str(body.get("bos_token", ""), "bos_token"),
                eos_token=_str(body.get("eos_token", ""), "eos_token"),
                raw=body,
            )

        return self._checked("/props", check)

    def model_info(self) -> ModelInfo:
        _, body = self._json("GET", "/v1/models", timeout=min(self.timeout, 30.0))

        def check() -> ModelInfo:
            data = _list(_get(body, "data"), "data")
            if len(data) != 1:
                raise _Bad(f"{len(data)} models listed, not one")
            entry = _obj(data[0], "data[0]")
            meta = _obj(_get(entry, "meta"), "meta")
            return ModelInfo(
                model_id=_str(_get(entry, "id"), "id"),
                n_vocab=_int(_get(meta, "n_vocab"), "n_vocab", 1),
                n_ctx_train=_int(meta.get("n_ctx_train", 0), "n_ctx_train"),
                n_params=_int(meta.get("n_params", 0), "n_params"),
                size=_int(meta.get("size", 0), "size"),
            )

        info = self._checked("/v1/models", check)
        self._n_vocab = info.n_vocab
        return info

    @property
    def n_vocab(self) -> int:
        if self._n_vocab is None:
            self.model_info()
        assert self._n_vocab is not None
        return self._n_vocab

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = False) -> list[int]:
        """Token ids of `text`. The server's defaults are add_special false, parse_special TRUE:
        both are always sent."""
        body = {"content": text, "add_special": add_special, "parse_special": parse_special}
        _, answer = self._json("POST", "/tokenize", body)
        n_vocab = self.n_vocab

        def check() -> list[int]:
            tokens = _list(_get(answer, "tokens"), "tokens")
            return [_int(t, "token id", 0, n_vocab) for t in tokens]

        return self._checked("/tokenize", check)

    def detokenize(self, tokens: Sequence[int]) -> str:
        _, answer = self._json("POST", "/detokenize", {"tokens": list(tokens)})
        return self._checked("/detokenize", lambda: _str(_get(answer, "content"), "content"))

    def apply_template(
        self, messages: Sequence[Mapping[str, str]], kwargs: Mapping[str, Any] | None = None
    ) -> str | None:
        """The prompt the server's chat template renders (with the generation prompt); `kwargs`
        go to the template as `chat_template_kwargs` (over the server's --chat-template-kwargs).
        None where the build has no /apply-template (HTTP 404: older builds)."""
        body: dict[str, Any] = {"messages": [dict(m) for m in messages]}
        if kwargs:
            body["chat_template_kwargs"] = dict(kwargs)
        status, answer = self._json("POST", "/apply-template", body, ok=(200, 404))
        if status == 404:
            return None
        return self._checked("/apply-template", lambda: _str(_get(answer, "prompt"), "prompt"))

    # completions ------------------------------------------------------------------------------
    def _completion(self, prompt: Sequence[int], extra: dict[str, Any]) -> dict[str, Any]:
        if not prompt:
            raise ValueError("an empty prompt")
        body: dict[str, Any] = {
            "prompt": [int(t) for t in prompt],
            "temperature": 0.0,
            "samplers": ["temperature"],  # greedy, whatever samplers the server was started with
            "cache_prompt": True,
            "return_tokens": True,
            "post_sampling_probs": False,
            "stream": False,
            "ignore_eos": False,
            # without it the answer echoes the prompt's text and every setting: 21 kB at 4K tokens
            "response_fields": list(_RESPONSE_FIELDS),
            **extra,
        }
        self.last_request = {k: v for k, v in body.items() if k not in ("prompt", "response_fields")}
        self.last_request["prompt_tokens"] = len(prompt)
        _, answer = self._json("POST", "/completion", body)
        if self.expect_model is not None and answer.get("model") != self.expect_model:
            raise self._error(
                f"an answer came from another server (model {str(answer.get('model'))[:60]!r})",
                "another server took this port: stop it, or start on another port",
            )
        return answer

    def next_token(
        self, prompt: Sequence[int], n_probs: int, force: int | None = None, *, cache_prompt: bool = True
    ) -> NextToken:
        """The next-token distribution after `prompt` (top `n_probs`), and the log-prob of `force`
        over the full vocabulary where given (teacher forcing), else of the argmax. With
        `cache_prompt` the server evaluates only what follows its cached prefix (at least one
        token); without, the whole prompt in batches from position 0."""
        if n_probs < 1:
            raise ValueError("n_probs must be at least 1")
        n_vocab = self.n_vocab
        if force is not None and not 0 <= force < n_vocab:
            raise ValueError(f"forced token {force} is outside the vocabulary [0, {n_vocab})")
        extra: dict[str, Any] = {
            "n_predict": 1,
            "n_probs": n_probs,
            "logit_bias": [],
            "cache_prompt": cache_prompt,
        }
        if force is not None:
            extra["logit_bias"] = [[force, FORCE_BIAS]]
        answer = self._completion(prompt, extra)
        request = dict(self.last_request)
        out = self._checked("/completion", lambda: _next_token(answer, n_probs, n_vocab, force, request))
        if out is not None:
            return out
        # The sampled token's text is an incomplete UTF-8 sequence: the server drops its
        # probabilities. Force a token of plain text instead and read the top n.
        sampled = self._checked("/completion", lambda: _sampled_only(answer, n_vocab))
        extra["logit_bias"] = [[self.safe_token(), FORCE_BIAS]]
        again = self._completion(prompt, extra)
        second = self._checked(
            "/completion", lambda: _next_token(again, n_probs, n_vocab, self.safe_token(), request)
        )
        if second is None:
            raise self._error(
                "/completion gave no probabilities for a plain-text token",
                "check the server's build (llama-server --version)",
            )
        return _resolve_unreadable(second, sampled)

    def safe_token(self) -> int:
        """A token whose text is plain ASCII: forced when the real one cannot be reported."""
        if self._safe_token is None:
            for text in (" the", "the", "a", " ", "0"):
                tokens = self.tokenize(text)
                if len(tokens) == 1 and self.detokenize(tokens).isascii():
                    self._safe_token = tokens[0]
                    break
            else:
                raise self._error(
                    "no single-token plain text found in the vocabulary",
                    "this model cannot be probed through the server",
                )
        return self._safe_token

    def generate(self, prompt: Sequence[int], max_tokens: int, *, cache_prompt: bool = True) -> Generated:
        """Greedy continuation of `prompt`, at most `max_tokens` tokens, ending before an
        end-of-generation token (as kvprobe's in-process generate does)."""
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        extra = {"n_predict": max_tokens, "n_probs": 0, "logit_bias": [], "cache_prompt": cache_prompt}
        answer = self._completion(prompt, extra)
        request = dict(self.last_request)
        n_vocab = self.n_vocab

        def check() -> Generated:
            tokens = [_int(t, "token id", 0, n_vocab) for t in _list(_get(answer, "tokens"), "tokens")]
            if len(tokens) > max_tokens:
                raise _Bad(f"{len(tokens)} tokens for n_predict {max_tokens}")
            stop_type = _str(_get(answer, "stop_type"), "stop_type")
            if stop_type not in _STOP_TYPES:
                raise _Bad(f"stop_type {stop_type[:20]!r}")
            if stop_type == "eos" and tokens:
                tokens = tokens[:-1]  # the server returns the end-of-generation token too
            truncated = _get(answer, "truncated")
            if not isinstance(truncated, bool):
                raise _Bad("truncated is not a boolean")
            return Generated(tuple(tokens), stop_type, truncated, _timings(answer), request)

        return self._checked("/completion", check)


def _shut(conn: http.client.HTTPConnection) -> None:
    """Wake any read blocked on `conn` (the request's deadline has passed)."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _ssl_errors() -> type[Exception]:
    import ssl

    return ssl.SSLError


def _short(value: object) -> str:
    return " ".join(str(value).split())[:160]


def _timings(answer: Mapping[str, Any]) -> Timings:
    t = _obj(_get(answer, "timings"), "timings")
    nonneg = {"lo": 0.0}
    return Timings(
        cache_n=_int(_get(t, "cache_n"), "cache_n"),
        prompt_n=_int(_get(t, "prompt_n"), "prompt_n"),
        prompt_ms=_num(_get(t, "prompt_ms"), "prompt_ms", **nonneg),
        prompt_per_second=_num(_get(t, "prompt_per_second"), "prompt_per_second", **nonneg),
        predicted_n=_int(_get(t, "predicted_n"), "predicted_n"),
        predicted_ms=_num(_get(t, "predicted_ms"), "predicted_ms", **nonneg),
        predicted_per_second=_num(_get(t, "predicted_per_second"), "predicted_per_second", **nonneg),
    )


def _logprob(value: Any, what: str) -> float:
    lp = _num(value, what, hi=1e-6)  # float32 rounding can give +1e-7 for a certain token
    return min(lp, 0.0)


def _sampled_only(answer: Mapping[str, Any], n_vocab: int) -> int:
    tokens = _list(_get(answer, "tokens"), "tokens")
    if len(tokens) != 1:
        raise _Bad(f"{len(tokens)} tokens for n_predict 1")
    return _int(tokens[0], "sampled token id", 0, n_vocab)


def _top_list(entry: Mapping[str, Any], n_probs: int, n_vocab: int) -> tuple[list[int], list[float]]:
    top = _list(_get(entry, "top_logprobs"), "top_logprobs")
    if not 1 <= len(top) <= n_probs:
        raise _Bad(f"{len(top)} top_logprobs for n_probs {n_probs}")
    if len(top) < min(n_probs, n_vocab):
        raise _Bad(f"only {len(top)} top_logprobs for n_probs {n_probs} (vocabulary {n_vocab})")
    ids = [_int(_get(_obj(e, "top_logprobs entry"), "id"), "top token id", 0, n_vocab) for e in top]
    lps = [_logprob(_get(e, "logprob"), "top logprob") for e in top]
    if len(set(ids)) != len(ids):
        raise _Bad("a token appears twice in top_logprobs")
    if any(b > a + LOGPROB_TOLERANCE for a, b in itertools.pairwise(lps)):
        raise _Bad("top_logprobs are not in decreasing order")
    total = math.fsum(math.exp(lp) for lp in lps)
    if total > 1.0 + PROB_SUM_TOLERANCE:
        raise _Bad(f"the top probabilities sum to {total:.6f} > 1")
    return ids, lps


def _next_token(
    answer: Mapping[str, Any], n_probs: int, n_vocab: int, force: int | None, request: dict[str, Any]
) -> NextToken | None:
    """The checked NextToken of an answer; None where the server dropped the probabilities
    (the sampled token's text is an incomplete UTF-8 sequence)."""
    sampled = _sampled_only(answer, n_vocab)
    if force is not None and sampled != force:
        raise _Bad(f"token {sampled} sampled where {force} was forced (logit_bias not applied)")
    if _int(_get(answer, "tokens_predicted"), "tokens_predicted") != 1:
        raise _Bad("tokens_predicted is not 1 for n_predict 1")
    probs = answer.get("completion_probabilities")
    if probs is None or probs == []:
        return None
    probs = _list(probs, "completion_probabilities")
    if len(probs) != 1:
        raise _Bad(f"{len(probs)} completion_probabilities for n_predict 1")
    entry = _obj(probs[0], "completion_probabilities[0]")
    if _int(_get(entry, "id"), "completion_probabilities[0].id", 0, n_vocab) != sampled:
        raise _Bad("completion_probabilities[0].id differs from the sampled token")
    ids, lps = _top_list(entry, n_probs, n_vocab)
    value = _logprob(_get(entry, "logprob"), "sampled logprob")
    if sampled in ids and abs(lps[ids.index(sampled)] - value) > LOGPROB_TOLERANCE:
        raise _Bad("the sampled token's logprob differs from its top_logprobs entry")
    if sampled not in ids and value > lps[-1] + LOGPROB_TOLERANCE:
        raise _Bad("the sampled token is more likely than the last of the top n, yet not among them")
    if force is None and value < lps[0] - LOGPROB_TOLERANCE:
        raise _Bad("greedy sampling did not pick the most likely token")
    if value <= UNDERFLOW_SENTINEL:  # p underflowed float32: only a bound is known
        return NextToken(tuple(ids), tuple(lps), sampled, None, UNDERFLOW_BOUND, _timings(answer), request)
    return NextToken(tuple(ids), tuple(lps), sampled, value, value, _timings(answer), request)


def _resolve_unreadable(second: NextToken, token: int) -> NextToken:
    """`second` (a plain-text token forced) restated for `token`, whose value the server drops:
    exact if it is in the top n, else bounded by the n-th log-prob."""
    if token in second.top_ids:
        lp = second.top_logprobs[second.top_ids.index(token)]
        value, bound = lp, lp
    else:
        value, bound = None, second.top_logprobs[-1]
    return NextToken(
        second.top_ids, second.top_logprobs, token, value, bound, second.timings, second.request, retried=True
    )
