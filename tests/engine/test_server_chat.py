"""The chat form through a llama-server, on the real server and the real instruct model
(SmolLM2-135M-Instruct, ChatML): the framing comes from the server's own /apply-template, split
with kvprobe's checks and compared with kvprobe's rendering of the template; where the two
differ the run uses the server's and says so in one line; `--chat-template FILE` goes to the
servers kvprobe starts, and is refused with a server already running."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvprobe.api.engine import EngineOptions
from kvprobe.engine.server.engine import ServerEngine
from kvprobe.engine.server.process import ServerProcess
from kvprobe.infra.errors import UserError
from kvprobe.plan.chat import THINK_CLOSE
from kvprobe.plan.prompt import ENGINE_RENDERER, choose_prompt, engine_framing
from tests.helpers import (
    NEEDLES,
    assert_one_line_error,
    attached_servers,
    kill_left,
    kvprobe,
    llama_server_pids,
)

pytestmark = pytest.mark.slow

# SmolLM2's own template adds this system message when none is given; llama-server's built-in
# ChatML (--no-jinja) does not.
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# A template of the test's own, unlike the GGUF's: another default system message. No edge
# whitespace, which llama-server strips from a template file (its /props sha256 is then the file's).
CUSTOM_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}<|im_start|>system\nAnswer from the document only."
    "<|im_end|>\n{% endif %}{%- for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}{%- if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
# Answer log-probs (7 tokens), server vs in-process, measured on this model: at most 0.064 nats for
# f16 (--ctx 512 and 1024), 1e-3 for q4_0: the server forces each answer token in a request of its
# own, and for an f16 K/V llama.cpp's CPU flash attention takes another path for one row than for a
# tile (docs/server-notes.md §3). Allowed: 0.1 nats, a seventh of q4_0's effect at 1,024 tokens (0.68).
LOGPROB_TOLERANCE = 0.1
# A reasoning template whose generation prompt opens a thinking block (DeepSeek-R1's way).
THINKING_TEMPLATE = CUSTOM_TEMPLATE.replace(
    "<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n{% endif %}"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    found = tmp_path_factory.mktemp("server-chat")
    (found / "needles.toml").write_text(NEEDLES)
    (found / "custom.jinja").write_text(CUSTOM_TEMPLATE)
    (found / "thinking.jinja").write_text(THINKING_TEMPLATE)
    return found


@pytest.fixture(scope="module")
def own_model(instruct_model_path: Path, folder: Path) -> Path:
    """The instruct model under a path only this module's spawned servers load (a hard link
    where it can be): their arguments name it, so that no other server is taken for theirs."""
    path = folder / "own" / instruct_model_path.name
    path.parent.mkdir()
    try:
        os.link(instruct_model_path, path)
    except OSError:
        shutil.copyfile(instruct_model_path, path)
    return path.resolve()


def chat_args(model: Path, folder: Path, out: Path) -> list[str]:
    return [
        "--model", str(model), "--scenario", str(folder / "needles.toml"), "--ctx", "512",
        "--threads", "2", "--prompt-format", "chat", "--no-html", "--out", str(out),
    ]  # fmt: skip


def spawn_run(binary: Path, model: Path, folder: Path, out: Path, *extra: str) -> Any:
    """`kvprobe run --llama-server` in chat form; no server of the run may be left."""
    proc = kvprobe(
        "run", "--llama-server", str(binary), "--cache", "q4_0", *extra, *chat_args(model, folder, out)
    )
    left = llama_server_pids(binary, marker=str(model))
    kill_left(left)
    assert not left, f"llama-server processes left after the run: {left}"
    return proc


@pytest.fixture(scope="module")
def chat_runs(llama_server: Path, own_model: Path, instruct_model_path: Path, folder: Path) -> dict[str, Any]:
    """The same chat-form needles through spawned servers and in process."""
    served, local = folder / "spawn.json", folder / "in-process.json"
    proc = spawn_run(llama_server, own_model, folder, served)
    assert proc.returncode == 0, proc.stderr
    assert kvprobe("run", "--cache", "q4_0", *chat_args(instruct_model_path, folder, local)).returncode == 0
    return {"proc": proc, "server": json.loads(served.read_text()), "local": json.loads(local.read_text())}


def test_a_spawned_server_renders_the_framing_and_agrees(chat_runs: dict[str, Any]) -> None:
    prompt = chat_runs["server"]["prompt"]
    assert prompt["format"] == "chat"
    assert prompt["rendered_by"] == ENGINE_RENDERER
    assert prompt["renderings_agree"] is True
    assert "kvprobe_prefix_text" not in prompt  # only where the renderings differ
    assert prompt["template_family"] == "ChatML"
    assert prompt["default_system"] == SMOLLM_SYSTEM
    assert "otherwise than kvprobe" not in chat_runs["proc"].stdout
    local = chat_runs["local"]["prompt"]
    assert local["rendered_by"] == "kvprobe (the GGUF's template)"
    assert local["renderings_agree"] is None


def test_the_server_s_chat_items_are_the_in_process_prompts(chat_runs: dict[str, Any]) -> None:
    """The same framing tokens (texts, token counts, BOS) and so the same items: needles at the
    same positions (offset by the framing), the same answers, log-probs close."""
    server, local = chat_runs["server"], chat_runs["local"]
    same = ("prefix_text", "turn_end_text", "prefix_tokens", "turn_end_tokens", "bos", "template_sha256")
    assert [server["prompt"][k] for k in same] == [local["prompt"][k] for k in same]
    assert server["prompt"]["prefix_tokens"] > 20  # the system turn and the user header

    def items(doc: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
        return {(i["config"], i["doc"], i["ctx"], i["position"], i["key"]): i for i in doc["items"]}

    ours, theirs = items(server), items(local)
    assert ours.keys() == theirs.keys()
    assert len(ours) >= 8
    for key, item in ours.items():
        assert item["expected"] == theirs[key]["expected"], key
        assert [item["correct"], item["output"]] == [theirs[key]["correct"], theirs[key]["output"]], key
        assert abs(item["logprob"] - theirs[key]["logprob"]) < LOGPROB_TOLERANCE, key


def test_the_report_says_the_server_rendered_the_framing(chat_runs: dict[str, Any], folder: Path) -> None:
    report = kvprobe("report", str(folder / "spawn.json"))
    assert report.returncode == 0, report.stderr
    assert "framing rendered by the llama-server" in " ".join(report.stdout.split())


def test_chat_template_file_goes_to_the_spawned_servers(
    llama_server: Path, own_model: Path, folder: Path
) -> None:
    """The servers get --jinja --chat-template-file FILE: they render the file (its default
    system message, not SmolLM's), as kvprobe does, and their /props holds it."""
    out = folder / "custom.json"
    template = folder / "custom.jinja"
    proc = spawn_run(llama_server, own_model, folder, out, "--chat-template", str(template))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    prompt = doc["prompt"]
    assert prompt["template_source"] == "file custom.jinja"
    assert prompt["rendered_by"] == ENGINE_RENDERER
    assert prompt["renderings_agree"] is True
    assert prompt["default_system"] == "Answer from the document only."
    assert prompt["prefix_text"].startswith("<|im_start|>system\nAnswer from the document only.<|im_end|>")
    sha = hashlib.sha256(CUSTOM_TEMPLATE.encode()).hexdigest()
    assert prompt["template_sha256"] == sha
    for record in doc["runtime"]["server"]["configs"].values():
        args = record["args"]
        assert args[args.index("--chat-template-file") + 1] == str(template.resolve())
        assert "--jinja" in args
        assert record["props"]["chat_template_sha256"] == sha


@pytest.fixture(scope="module")
def attached(
    llama_server: Path, instruct_model_path: Path, folder: Path
) -> Iterator[dict[str, ServerProcess]]:
    """Two servers as a user may run them: llama.cpp's built-in ChatML (--no-jinja), which adds
    no system message where SmolLM2's own template adds one."""
    with attached_servers(llama_server, instruct_model_path, folder, "--no-jinja") as servers:
        yield servers


def test_an_attached_server_s_own_framing_is_used_and_said(
    attached: dict[str, ServerProcess], instruct_model_path: Path, folder: Path
) -> None:
    out = folder / "attach.json"
    proc = kvprobe(
        "run", "--server", attached["q4_0"].url, "--server-cache", "q4_0", "--reference-server",
        attached["f16"].url, *chat_args(instruct_model_path, folder, out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    said = [ln for ln in proc.stdout.splitlines() if "frames the prompt otherwise" in ln]
    assert len(said) == 1, proc.stdout
    assert "the run uses the server's framing" in said[0]
    prompt = json.loads(out.read_text())["prompt"]
    assert prompt["rendered_by"] == ENGINE_RENDERER
    assert prompt["renderings_agree"] is False
    assert prompt["prefix_text"] == "<|im_start|>user\n"  # the server's: no system turn
    assert prompt["default_system"] == ""
    assert prompt["kvprobe_prefix_text"].startswith(f"<|im_start|>system\n{SMOLLM_SYSTEM}")
    assert prompt["kvprobe_turn_end_text"] == prompt["turn_end_text"]
    assert prompt["prefix_tokens"] == 3  # <|im_start|> user \n
    report = " ".join(kvprobe("report", str(out)).stdout.split())
    assert "not as kvprobe renders the template" in report


def test_a_thinking_block_the_server_opens_is_closed(
    llama_server: Path, instruct_model_path: Path, folder: Path
) -> None:
    """A generation prompt that opens a thinking block: closed in the server's framing as in
    kvprobe's, so the two agree and the answer follows the closed block."""
    template = folder / "thinking.jinja"
    options = EngineOptions(
        binary=llama_server, chat_template=template.resolve(), log_dir=folder / "thinking"
    )
    (folder / "thinking").mkdir(exist_ok=True)
    choice = choose_prompt("chat", {}, template_file=str(template), system=None)
    assert choice.framing is not None
    assert choice.framing.thinking == "closed"
    engine = ServerEngine().configured(options)
    with engine.load(instruct_model_path, n_gpu_layers=0, n_threads=1, use_extra_bufts=False) as model:
        served = engine_framing(choice, model)
    assert served.rendered_by == ENGINE_RENDERER
    assert served.framing is not None
    assert served.framing.thinking == "closed"
    assert served.framing.suffix.endswith(f"<think>\n\n{THINK_CLOSE}\n\n")
    assert served.agrees is True


def test_chat_template_with_a_running_server_is_refused(folder: Path, instruct_model_path: Path) -> None:
    out = folder / "refused.json"
    proc = kvprobe(
        "run", "--server", "http://127.0.0.1:9", "--server-cache", "q4_0", "--reference-server",
        "http://127.0.0.1:10", "--chat-template", str(folder / "custom.jinja"),
        *chat_args(instruct_model_path, folder, out),
    )  # fmt: skip
    assert_one_line_error(proc, "--chat-template goes with --llama-server PATH", "drop --chat-template")
    assert not out.exists()


def test_a_user_s_own_template_argument_passes_unless_kvprobe_sets_one(
    llama_server: Path, folder: Path
) -> None:
    """--server-arg=--chat-template-file=F is the user's server as they run it (the run then uses
    its framing); with kvprobe's --chat-template it would fight kvprobe's, and is refused."""
    own = ("--chat-template-file=" + str(folder / "custom.jinja"),)
    ServerEngine().configured(EngineOptions(binary=llama_server, server_args=own))
    for arg in (*own, "--no-jinja", "--chat-template=chatml"):
        with pytest.raises(UserError, match="kvprobe sets the"):
            ServerEngine().configured(
                EngineOptions(binary=llama_server, server_args=(arg,), chat_template=folder / "custom.jinja")
            )
