"""Chat form: templates rendered, their framing found, and every probe fed through it, on real
llama.cpp with tiny GGUFs that carry a ChatML or a Gemma-style template."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import ContextSettings
from kvprobe.engine.llamacpp.model import Model
from kvprobe.infra.errors import UserError
from kvprobe.plan.chat import ChatTemplate, find_framing
from kvprobe.plan.prompt import PromptChoice, choose_prompt, frame_tokens
from kvprobe.plan.scenario import load_scenario
from kvprobe.run.request import RunSettings
from kvprobe.run.runner import Runner
from tests.helpers import CHATML, CHATML_TOKENS, kvprobe, write_tiny_model

GEMMA = (  # Gemma 3's shape: BOS in the template's text, content trimmed, "model" turns
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' "
    "+ message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
THINKING = (  # a reasoning template whose generation prompt opens a thinking block
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
QWEN3 = (  # Qwen 3's switch: enable_thinking=false writes an empty thinking block
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
    "enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
GEMMA_TOKENS = ("<start_of_turn>", "<end_of_turn>")


def framing(template: str, system: str | None = None) -> tuple[str, str, str]:
    f = find_framing(ChatTemplate(template, "gguf"), bos_token="<s>", eos_token="</s>", system=system)
    return f.prefix, f.suffix, f.thinking


@pytest.mark.parametrize(
    ("template", "prefix", "suffix", "family"),
    [
        (CHATML, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
         "<|im_end|>\n<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", "ChatML"),
        (GEMMA, "<s><start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n", "Gemma"),
        (LLAMA3, "<s><|start_header_id|>user<|end_header_id|>\n\n",
         "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "Llama 3"),
        (QWEN3, "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", "ChatML"),
    ],
    ids=["chatml", "gemma", "llama3", "qwen3"],
)  # fmt: skip
def test_the_framing_is_the_text_around_the_message(
    template: str, prefix: str, suffix: str, family: str
) -> None:
    assert framing(template)[:2] == (prefix, suffix)
    assert ChatTemplate(template, "gguf").family == family


def test_a_system_message_and_the_template_default() -> None:
    prefix, _, _ = framing(CHATML, system="Answer briefly.")
    assert prefix == "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n"
    f = find_framing(ChatTemplate(CHATML, "gguf"), bos_token="", eos_token="", system=None)
    assert f.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert (
        find_framing(ChatTemplate(GEMMA, "gguf"), bos_token="", eos_token="", system=None).default_system
        == ""
    )


def test_an_open_thinking_block_is_closed_before_the_answer() -> None:
    _prefix, suffix, thinking = framing(THINKING)
    assert (suffix, thinking) == ("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", "closed")
    assert framing(QWEN3)[2] == "disabled"


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{% for m in messages %}{{ m.content | lower }}{% endfor %}<a>", "rewrites the user's message"),
        ("{% for m in messages %}{{ m.content[:8] }}{% endfor %}<a>", "rewrites the user's message"),
        ("{% for m in messages %}{{ m.content }}{{ m.content | length }}{% endfor %}", "frames different"),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", "writes nothing after"),
        ("{{ raise_exception('Only user and assistant roles are supported!') }}", "does not render"),
        ("{% for m in messages %}", "does not render"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "too much"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "too long"),
        ("{{ 'x' * 10000000000 }}", "too much"),
        (
            "{% set n = namespace(a='x') %}{% for i in range(60) %}{% set n.a = n.a + n.a %}{% endfor %}",
            "much",
        ),
    ],
    ids=[
        "lower-cases",
        "cuts",
        "content-dependent",
        "nothing-after",
        "raises",
        "syntax",
        "nested-loops-writing",
        "nested-loops-silent",
        "huge-repeat",
        "doubling",
    ],
)
def test_a_template_kvprobe_cannot_frame_is_refused_in_one_line(template: str, words: str) -> None:
    with pytest.raises(UserError) as info:
        framing(template)
    assert words in str(info.value)
    assert "\n" not in str(info.value)
    assert "--prompt-format raw" in str(info.value)


def test_the_mistral_shape_needs_no_generation_prompt() -> None:
    """Mistral's [INST] ... [/INST] writes no assistant header: the turn's end is the cue."""
    prefix, suffix, _ = framing(MISTRAL)
    assert (prefix, suffix) == ("<s>[INST] ", " [/INST]")
    assert ChatTemplate(MISTRAL, "gguf").family == "Mistral"


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("chat")
    return {
        "chatml": write_tiny_model(
            folder / "chatml.gguf", chat_template=CHATML, control_tokens=CHATML_TOKENS, eos_token="<|im_end|>"
        ),
        "gemma": write_tiny_model(
            folder / "gemma.gguf", chat_template=GEMMA, control_tokens=GEMMA_TOKENS, eos_token="<end_of_turn>"
        ),
    }


def _facts(path: Path) -> dict[str, object]:
    from kvprobe.weights.doctor import read_facts

    return read_facts(path)


@pytest.mark.parametrize(("which", "bos"), [("chatml", "tokenizer"), ("gemma", "template")])
def test_one_bos_never_two(chat_models: dict[str, Path], which: str, bos: str) -> None:
    """Gemma's template writes BOS as text and the tokenizer adds one too: the prompt gets one."""
    choice = choose_prompt("auto", _facts(chat_models[which]), template_file=None, system=None)
    assert choice.format == "chat"
    with Model(chat_models[which], n_threads=2) as model:
        frame = frame_tokens(choice, model)
        assert model.bos is not None
        assert frame.lead is not None
        assert frame.lead[0] == model.bos
        assert model.bos not in frame.lead[1:]
        assert frame.bos == bos
        marker = model.tokenize_special(CHATML_TOKENS[0] if which == "chatml" else GEMMA_TOKENS[0])
        assert len(marker) == 1
        assert frame.lead[1:2] == marker


def test_a_model_without_a_template_stays_raw(tiny_model_path: Path) -> None:
    facts = _facts(tiny_model_path)
    assert choose_prompt("auto", facts, template_file=None, system=None).format == "raw"
    for requested, system, words in (
        ("chat", None, "has no chat template"),
        ("raw", "Be brief.", "--system needs the chat form"),
        ("auto", "Be brief.", "--system needs a chat template"),
    ):
        with pytest.raises(UserError, match=words):
            choose_prompt(requested, facts, template_file=None, system=system)


def _runner(model: Model, choice: PromptChoice, ctx: int = 512) -> Runner:
    scenario = load_scenario("quick")
    return Runner(model, scenario, RunSettings(ctx, 0, "onepass", True, True, prompt=choice), baseline="f16")


def test_chat_forks_score_exactly_the_fresh_chat_prompt(chat_models: dict[str, Path]) -> None:
    """Every needle query, forked from the one-pass document, scores what a fresh context fed
    the whole chat prompt (framing, document, question, turn end, answer prefix) scores."""
    choice = choose_prompt("auto", _facts(chat_models["chatml"]), template_file=None, system=None)
    assert choice.framing is not None
    with Model(chat_models["chatml"], n_threads=2) as model:
        runner = _runner(model, choice)
        frame, run = runner.prompt, runner.runs["needle"]
        [doc] = runner.documents
        assert frame.lead is not None
        assert doc.tokens[: len(frame.lead)] == frame.lead
        turn_end = model.tokenize_special(choice.framing.suffix)
        cache = CacheConfig("q8_0", "q8_0")
        s = ContextSettings(n_ctx=1024, chunk=64, n_threads=2, flash_attn=True, attn_rotation=True)
        needles = [n for n in doc.spans if n.end <= 512]
        assert needles
        with model.context(cache, s) as ctx:
            ctx.feed(doc.tokens[:512])
            forked = [ctx.score(run.query[n.key], run.answer[n.key]) for n in needles]  # type: ignore[attr-defined]
        for n, scored in zip(needles, forked, strict=True):
            query, answer = run.query[n.key], run.answer[n.key]  # type: ignore[attr-defined]
            prefix = model.tokenize(run.spec.answer_prefix.format(key=n.key))  # type: ignore[attr-defined]
            assert query[len(query) - len(prefix) - len(turn_end) : len(query) - len(prefix)] == turn_end
            # a fresh context, no forks: the whole chat prompt fed as one sequence
            with model.context(cache, s) as fresh:
                fresh.feed(doc.tokens[:512])
                rows = fresh.feed_logits(query + answer[:-1])[len(query) - 1 :]
            lps = []
            for row, tok in zip(rows, answer, strict=True):
                x = row.astype(np.float64)
                lps.append(x[tok] - (x.max() + np.log(np.exp(x - x.max()).sum())))
            assert scored.token_logprobs == pytest.approx(lps, abs=0, rel=0)
            assert scored.argmax_match == all(
                int(np.argmax(r)) == t for r, t in zip(rows, answer, strict=True)
            )


def test_a_run_in_chat_form_records_its_framing(chat_models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "chat.json"
    proc = kvprobe(
        "run", "--model", str(chat_models["gemma"]), "--scenario", "quick", "--ctx", "512", "--cache", "q8_0",
        "--threads", "2", "--out", str(out), "--system", "Answer briefly.",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    prompt = doc["prompt"]
    assert (prompt["format"], prompt["template_family"], prompt["bos"], prompt["system"]) == (
        "chat", "Gemma", "template", "Answer briefly.",
    )  # fmt: skip
    assert (
        prompt["prefix_text"]
        == "<s><start_of_turn>system\nAnswer briefly.<end_of_turn>\n<start_of_turn>user\n"
    )
    needles = [it for it in doc["items"] if it["probe"] == "needle"]
    assert needles
    assert all("output_ended_turn" in it for it in needles)
    assert "chat form (Gemma" in proc.stdout  # the format is said before the run
    # random weights retrieve nothing: the reference check says so at once, and the verdict too
    [check] = [ln for ln in proc.stdout.splitlines() if ln.startswith("reference check:")]
    assert "retrieves 0% of its needles at 512 tokens" in check
    assert doc["verdict"]["reference_check"]
    assert doc["verdict"]["sentences"][0].startswith("The f16 reference retrieves 0%")
    report = kvprobe("report", str(out))
    assert report.returncode == 0
    assert "chat form (Gemma" in report.stdout


def test_raw_runs_record_raw_and_compare_refuses_to_pair_formats(
    chat_models: dict[str, Path], tmp_path: Path
) -> None:
    runs = {}
    for form in ("chat", "raw"):
        out = tmp_path / f"{form}.json"
        proc = kvprobe(
            "run", "--model", str(chat_models["chatml"]), "--scenario", "quick", "--ctx", "512",
            "--cache", "q8_0", "--threads", "2", "--prompt-format", form, "--out", str(out),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        runs[form] = json.loads(out.read_text())
    assert runs["raw"]["prompt"]["format"] == "raw"
    [check] = runs["raw"]["verdict"]["reference_check"]
    assert "raw text to a model with a chat template" in check
    assert "output_ended_turn" not in runs["raw"]["items"][0]
    proc = kvprobe("compare", str(tmp_path / "raw.json"), str(tmp_path / "chat.json"))
    assert proc.returncode == 0, proc.stderr
    assert "unpaired" in proc.stdout
    assert "prompt format" in proc.stdout


@pytest.mark.parametrize(
    ("template", "words"),
    [("{% for m in messages %}{{ m.content | upper }}{% endfor %}<x>", "rewrites the user's message"),
     ("{% if %}", "does not render")],
    ids=["rewrites", "broken"],
)  # fmt: skip
def test_a_bad_template_file_stops_the_run_in_one_line(
    tiny_model_path: Path, tmp_path: Path, template: str, words: str
) -> None:
    path = tmp_path / "t.jinja"
    path.write_text(template)
    out = tmp_path / "r.json"
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", "quick", "--ctx", "512", "--chat-template",
        str(path), "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert words in lines[0]
    assert "t.jinja" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jinja"]


def test_doctor_names_the_template(chat_models: dict[str, Path], tiny_model_path: Path) -> None:
    proc = kvprobe("doctor", str(chat_models["chatml"]))
    assert proc.returncode == 0, proc.stderr
    [line] = [ln for ln in proc.stdout.splitlines() if "chat template" in ln]
    assert "ChatML" in line
    assert "sha256" in line
    assert "SmolLM" in line
    bare = kvprobe("doctor", str(tiny_model_path))
    assert "chat template: none" in bare.stdout


def test_doctor_finishes_on_a_template_that_never_ends(tmp_path: Path) -> None:
    endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    model = write_tiny_model(tmp_path / "endless.gguf", chat_template=endless)
    proc = kvprobe("doctor", str(model))
    assert proc.returncode == 0, proc.stderr
    said = " ".join(proc.stdout.split())
    assert "kvprobe cannot use it: it takes too long" in said


def test_scenarios_that_set_no_chat_key_keep_their_hash() -> None:
    """The chat keys are hashed only when set: the committed result CI compares against
    (`nox -s compare`) stays paired with new runs of the same scenario."""
    from dataclasses import replace

    from kvprobe.plan.scenario import PromptSpec

    gate = Path(__file__).resolve().parents[2] / "results" / "examples" / "quick-f16-q8_0-1024.json"
    assert load_scenario("quick").sha256 == json.loads(gate.read_text())["scenario"]["sha256"]
    chat = replace(load_scenario("quick"), prompt=PromptSpec(format="chat"))
    assert chat.sha256 != load_scenario("quick").sha256  # a key that is set is hashed
