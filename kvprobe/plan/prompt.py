"""The prompt format a run speaks to its model in: raw completion text, or the model's chat
template (kvprobe.plan.chat). Decided at validation from the GGUF header and the options;
turned into tokens once the tokenizer is loaded. An engine that renders chat prompts itself
(a llama-server) then gives the framing its own users get (`engine_framing`), compared with
kvprobe's rendering. Pure functions of plain data and the model they are handed."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from kvprobe.api import PromptFrame
from kvprobe.api.record import JsonObject
from kvprobe.api.result import ResultDoc
from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import read_input_text
from kvprobe.plan.chat import ChatTemplate, Framing, find_framing, split_framing

MAX_TEMPLATE_BYTES = 1 << 20
MAX_SYSTEM_CHARS = 10_000
# Who rendered a run's framing, where an engine did (the one engine that renders chat prompts
# itself today; its /v1/chat/completions renders the same way).
ENGINE_RENDERER = "llama-server /apply-template"
ENGINE_FIX = (
    "start the servers with another template (--chat-template FILE gives the servers kvprobe starts "
    "one), or use --prompt-format raw"
)


class SpecialTokenizer(Protocol):
    def tokenize_special(self, text: str) -> list[int]: ...

    @property
    def bos(self) -> int | None: ...


class ChatRenderer(SpecialTokenizer, Protocol):
    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str | None: ...


class _NoRenderer(Exception):
    """The engine renders no chat prompts (kvprobe renders the template itself)."""


@dataclass(frozen=True)
class PromptChoice:
    """What a run will use, and why."""

    format: str  # "raw" | "chat"
    why: str
    template: ChatTemplate | None = None
    framing: Framing | None = None
    system: str | None = None  # the system message kvprobe adds (None: only the template's own)
    rendered_by: str | None = None  # who rendered `framing`: None kvprobe, else ENGINE_RENDERER
    agrees: bool | None = None  # an engine's rendering: whether it gives kvprobe's framing tokens
    kvprobe_framing: Framing | None = None  # kvprobe's own, where the engine's differs

    @property
    def renderer(self) -> str:
        """Who rendered the framing, in words."""
        if self.rendered_by is not None:
            return self.rendered_by
        source = self.template.source if self.template is not None else "gguf"
        return "kvprobe (the GGUF's template)" if source == "gguf" else f"kvprobe ({source})"


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


def engine_framing(choice: PromptChoice, model: ChatRenderer) -> PromptChoice:
    """The chat framing `model`'s engine renders itself, where it does (a llama-server's
    /apply-template: what its users get), found with the same messages and checks as kvprobe's
    (plan.chat.split_framing), and compared with kvprobe's rendering of the template: they agree
    when they give the same framing tokens (a server drops a leading BOS text that its tokenizer
    adds back). The run uses the engine's framing either way."""
    if choice.framing is None:
        return choice

    def rendered(messages: list[dict[str, str]]) -> str:
        text = model.render_chat(messages)
        if text is None:
            raise _NoRenderer
        return text

    try:
        theirs = split_framing(
            rendered, where="the llama-server's chat template (/apply-template)", system=choice.system,
            fix=ENGINE_FIX,
        )  # fmt: skip
    except _NoRenderer:
        return choice
    served = replace(choice, framing=theirs, rendered_by=ENGINE_RENDERER)
    ours, frame = frame_tokens(choice, model), frame_tokens(served, model)
    agrees = (ours.lead, ours.turn_end) == (frame.lead, frame.turn_end)
    return replace(served, agrees=agrees, kvprobe_framing=None if agrees else choice.framing)


def framing_note(choice: PromptChoice) -> str | None:
    """One line where the engine's framing differs from kvprobe's rendering (None otherwise)."""
    theirs, ours = choice.framing, choice.kvprobe_framing
    if choice.agrees is not False or theirs is None or ours is None or choice.template is None:
        return None
    part, server, own = (
        ("prefix", theirs.prefix, ours.prefix)
        if theirs.prefix != ours.prefix
        else ("turn end", theirs.suffix, ours.suffix)
    )
    return (
        f"chat form: the llama-server frames the prompt otherwise than kvprobe's rendering of the template "
        f"({choice.template.source}): {part} {_clip(server)} (server) vs {_clip(own)} "
        "(kvprobe); the run uses the server's framing, what its users get (both are in the result's prompt)"
    )


def _clip(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


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
            rendered_by=choice.renderer,
            renderings_agree=choice.agrees,
        )
        if choice.kvprobe_framing is not None:
            record.update(
                kvprobe_prefix_text=choice.kvprobe_framing.prefix,
                kvprobe_turn_end_text=choice.kvprobe_framing.suffix,
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
    server = ""
    if record.get("rendered_by") == ENGINE_RENDERER:
        server = "; framing rendered by the llama-server" + (
            ", not as kvprobe renders the template" if record.get("renderings_agree") is False else ""
        )
    return (
        f"chat form ({record.get('template_family')} template from {record.get('template_source')}, sha256 "
        f"{str(record.get('template_sha256'))[:12]}; {said}{thinking}{server})"
    )


def framing_key(doc: ResultDoc | JsonObject) -> tuple[Any, ...]:
    """What must match for two results' items to be the same prompts (a file from before the
    prompt was recorded is raw)."""
    prompt = doc.get("prompt") or {}
    key = (prompt.get("format", "raw"), *(prompt.get(k) for k in ("template_sha256", "system", "thinking")))
    if prompt.get("renderings_agree") is False:  # the server's own framing, not kvprobe's of the template
        return (*key, _digest(f"{prompt.get('prefix_text')}\x00{prompt.get('turn_end_text')}"))
    return key


def framing_label(doc: ResultDoc | JsonObject) -> str:
    """framing_key in a few words: equal labels, equal framing."""
    form, sha, system, thinking, *served = framing_key(doc)
    if form != "chat":
        return "raw"
    extra = (
        (f", system {str(system)[:40]!r}" if system else "")
        + (f", thinking {thinking}" if thinking != "none" else "")
        + (f", the server's framing {served[0]}" if served else "")
    )
    return f"chat, template {str(sha)[:12]}{extra}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
