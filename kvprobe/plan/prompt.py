"""The prompt format a run speaks to its model in: raw completion text, or the model's chat
template (kvprobe.plan.chat). Decided at validation from the GGUF header and the options;
turned into tokens once the tokenizer is loaded. Pure functions of plain data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kvprobe.api import PromptFrame
from kvprobe.api.record import JsonObject
from kvprobe.api.result import ResultDoc
from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import read_input_text
from kvprobe.plan.chat import ChatTemplate, Framing, find_framing

MAX_TEMPLATE_BYTES = 1 << 20
MAX_SYSTEM_CHARS = 10_000


class SpecialTokenizer(Protocol):
    def tokenize_special(self, text: str) -> list[int]: ...

    @property
    def bos(self) -> int | None: ...


@dataclass(frozen=True)
class PromptChoice:
    """What a run will use, and why."""

    format: str  # "raw" | "chat"
    why: str
    template: ChatTemplate | None = None
    framing: Framing | None = None
    system: str | None = None  # the system message kvprobe adds (None: only the template's own)


RAW_CHOICE = PromptChoice("raw", "the model has no chat template")


def read_template_file(path: str) -> ChatTemplate:
    text = read_input_text(
        Path(path).expanduser(),
        "chat template",
        "give a Jinja chat template file",
        max_bytes=MAX_TEMPLATE_BYTES,
    )
    return ChatTemplate(text, f"file {Path(path).name}")


def choose_prompt(
    requested: str, facts: dict[str, Any], *, template_file: str | None, system: str | None
) -> PromptChoice:
    """`requested`: auto | chat | raw. `facts`: the model's header facts (weights.doctor)."""
    if system is not None and len(system) > MAX_SYSTEM_CHARS:
        raise UserError(f"--system is {len(system):,} characters: give at most {MAX_SYSTEM_CHARS:,}")
    if requested == "raw":
        if template_file:
            raise UserError("--chat-template has no effect with --prompt-format raw: drop one of them")
        if system:
            raise UserError("--system needs the chat form: drop it, or use --prompt-format chat")
        return PromptChoice("raw", "--prompt-format raw")
    template = None
    if template_file:
        template = read_template_file(template_file)
    elif isinstance(facts.get("chat_template"), str) and facts["chat_template"].strip():
        template = ChatTemplate(facts["chat_template"], "gguf")
    if template is None:
        if requested == "chat":
            raise UserError(
                f"{facts.get('name', 'the model')} has no chat template (tokenizer.chat_template): "
                "give one with --chat-template FILE, or use --prompt-format raw"
            )
        if system:
            raise UserError(
                "--system needs a chat template, and the model has none: give --chat-template FILE"
            )
        return PromptChoice("raw", "the model has no chat template")
    framing = find_framing(
        template, bos_token=facts.get("bos_text") or "", eos_token=facts.get("eos_text") or "", system=system
    )
    why = "--prompt-format chat" if requested == "chat" else f"the chat template ({template.source})"
    return PromptChoice("chat", why, template, framing, system)


def frame_tokens(choice: PromptChoice, tok: SpecialTokenizer) -> PromptFrame:
    """Tokens for the choice: one BOS, never two (the template's text and the tokenizer's own)."""
    bos = tok.bos
    if choice.framing is None:
        return PromptFrame(
            "raw", [bos] if bos is not None else [], [], "tokenizer" if bos is not None else "none"
        )
    lead = tok.tokenize_special(choice.framing.prefix)
    source = "none"
    if lead and bos is not None and lead[0] == bos:
        source = "template"
        while lead[1:2] == [bos]:
            lead = lead[1:]
    elif bos is not None:
        lead, source = [bos, *lead], "tokenizer"
    return PromptFrame("chat", lead, tok.tokenize_special(choice.framing.suffix), source)


def prompt_record(choice: PromptChoice, frame: PromptFrame) -> dict[str, Any]:
    """The result's `prompt` section: what took effect."""
    record: dict[str, Any] = {"format": choice.format, "why": choice.why, "bos": frame.bos}
    if choice.template is not None and choice.framing is not None:
        record.update(
            template_sha256=choice.template.sha256,
            template_source=choice.template.source,
            template_family=choice.template.family,
            system=choice.system,
            default_system=choice.framing.default_system,
            thinking=choice.framing.thinking,
            prefix_tokens=len(frame.lead or []),
            turn_end_tokens=len(frame.turn_end),
            prefix_text=choice.framing.prefix,
            turn_end_text=choice.framing.suffix,
        )
    return record


def describe(record: dict[str, Any]) -> str:
    """The prompt format in words, from a result's `prompt` section (or a run's record)."""
    if record.get("format", "raw") != "chat":
        return f"raw text ({record.get('why', 'a file from before prompt formats were recorded')})"
    system = record.get("system")
    said = (
        f'system "{system[:60]}"'
        if system
        else ("the template's own system message" if record.get("default_system") else "no system message")
    )
    thinking = {"closed": "; thinking block closed", "disabled": "; thinking off"}.get(
        record.get("thinking", ""), ""
    )
    return (
        f"chat form ({record.get('template_family')} template from {record.get('template_source')}, sha256 "
        f"{str(record.get('template_sha256'))[:12]}; {said}{thinking})"
    )


def framing_key(doc: ResultDoc | JsonObject) -> tuple[Any, ...]:
    """What must match for two results' items to be the same prompts (a file from before the
    prompt was recorded is raw)."""
    prompt = doc.get("prompt") or {}
    return (
        prompt.get("format", "raw"),
        prompt.get("template_sha256"),
        prompt.get("system"),
        prompt.get("thinking"),
    )


def framing_label(doc: ResultDoc | JsonObject) -> str:
    """framing_key in a few words: equal labels, equal framing."""
    form, sha, system, thinking = framing_key(doc)
    if form != "chat":
        return "raw"
    extra = (f", system {str(system)[:40]!r}" if system else "") + (
        f", thinking {thinking}" if thinking != "none" else ""
    )
    return f"chat, template {str(sha)[:12]}{extra}"
