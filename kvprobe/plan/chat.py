"""Chat templates: how an instruct model frames the prompt its users send it.

The GGUF's `tokenizer.chat_template` (or a file) is rendered as llama.cpp's `--jinja` and
llama-cpp-python do: Jinja2 in a sandbox, with `messages`, `add_generation_prompt`,
`bos_token`, `eos_token` and the helpers common templates call. A run in chat form needs only
the template's *framing*: the text before the user's content, and the text after it up to the
generation prompt (the assistant header). It is found by rendering sentinel contents; a
template that rewrites the content, or whose framing depends on it, is refused, since kvprobe
would then score a prompt other than the one it records. An engine that renders chat prompts
itself (a llama-server's /apply-template) is split the same way (`split_framing`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

from kvprobe.infra.errors import UserError

PROMPT_FORMATS = ("auto", "chat", "raw")
# Mixed case, digits and punctuation, no edge whitespace: a template that trims the content
# (Llama 3 does) keeps it whole; one that lower-cases, escapes or moves it loses it.
SENTINELS = ("KvProbe-Sentinel-7f3a: Who? 12.", "Second kvprobe sentinel #41, longer text.")
# strftime_now answers this fixed date, so that a template that prints today's date (Llama 3.1)
# frames every run the same way and results stay reproducible.
FIXED_DATE = "2024-07-26"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# A template is code from a file: real ones render in milliseconds to a few KB, so a render
# past these bounds is a hostile or broken template, refused rather than waited for.
RENDER_SECONDS = 5.0
MAX_RENDER_CHARS = 1_000_000
# A single C call (`'x'|center(2000000000)`, a string doubled with `~`) allocates before any
# check can run: the framing is found in a child process whose address space may grow by
# this much, and whose answer is waited for this long (each render has its own timer too).
RENDER_MEMORY = 256 << 20
CHILD_SECONDS = 3 * RENDER_SECONDS + 5.0


class _TooCostly(Exception):
    """A render past its time or size bound."""


FAMILIES = (  # (family, a marker only its templates use), most specific first
    ("Llama 3", "<|start_header_id|>"),
    ("Gemma", "<start_of_turn>"),
    ("ChatML", "<|im_start|>"),
    ("Mistral", "[INST]"),
    ("Phi 3", "<|user|>"),
    ("DeepSeek", "<｜User｜>"),
)


@dataclass(frozen=True)
class ChatTemplate:
    text: str
    source: str  # "gguf" or the file it came from

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def family(self) -> str:
        return next((name for name, marker in FAMILIES if marker in self.text), "unrecognised")

    @property
    def thinking(self) -> bool:
        """A reasoning template: it knows a thinking block."""
        return THINK_OPEN in self.text or "enable_thinking" in self.text


@dataclass(frozen=True)
class Framing:
    """What surrounds the user's content in a rendered prompt."""

    prefix: str  # the text before the content (system turn, user header; maybe BOS text)
    suffix: str  # after it: the end of the user turn, the generation prompt
    thinking: str  # "none", "disabled" (the template's own switch), "closed" (kvprobe closed it)
    default_system: str  # what the template puts before the user turn by itself ("" if nothing)


def _environment(deadline: float) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        """The sandbox, with sizes bounded: `"x" * 10**10` is one C call no timer interrupts."""

        intercepted_binops = frozenset({"*", "**", "+"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if _too_big(operator, left, right):
                raise _TooCostly
            return super().call_binop(context, operator, left, right)

    def bounded_range(*args: int) -> Iterator[int]:
        # Checked as it runs: a loop that writes nothing is not caught by the output bound.
        for n, value in enumerate(safe_range(*args)):
            if n % 4096 == 0 and time.monotonic() > deadline:
                raise _TooCostly
            yield value

    class IgnoreGenerationTags(jinja2.ext.Extension):
        """HuggingFace's `{% generation %}` tag, passed through as llama-cpp-python does."""

        tags = {"generation"}  # noqa: RUF012

        def parse(self, parser: Any) -> Any:
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = BoundedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[IgnoreGenerationTags, jinja2.ext.loopcontrols],
    )

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
        sort_keys: bool = False,
    ) -> str:  # fmt: skip
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env.filters["tojson"] = tojson
    env.globals["range"] = bounded_range
    return env


def _too_big(operator: str, left: Any, right: Any) -> bool:
    """Would `left operator right` build a result past the render's size bound?"""
    sized = (str, list, tuple)
    if operator == "**":
        return isinstance(right, int) and abs(right) > 64
    if operator == "*":
        count, seq = (left, right) if isinstance(left, int) else (right, left)
        return isinstance(count, int) and isinstance(seq, sized) and count * len(seq) > MAX_RENDER_CHARS
    return isinstance(left, sized) and isinstance(right, sized) and len(left) + len(right) > MAX_RENDER_CHARS


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Interrupt pure-Python work past `seconds`, where a timer signal can (the main thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise _TooCostly

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _raise_exception(message: str) -> None:
    raise ValueError(message)


def _strftime_now(fmt: str) -> str:
    from datetime import datetime

    return datetime.fromisoformat(FIXED_DATE).strftime(fmt)


def render(
    template: ChatTemplate,
    messages: list[dict[str, str]],
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
) -> str:
    """The template's text for `messages`; one line naming the template and the error if it
    cannot render."""
    deadline = time.monotonic() + RENDER_SECONDS
    try:
        with _alarm(RENDER_SECONDS):
            compiled = _environment(deadline).from_string(template.text)
            pieces = compiled.generate(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
                raise_exception=_raise_exception,
                strftime_now=_strftime_now,
                enable_thinking=False,  # Qwen 3's switch: answer without a thinking block
                tools=None,
                documents=None,
            )
            out: list[str] = []
            size = 0
            for piece in pieces:
                size += len(piece)
                if size > MAX_RENDER_CHARS or time.monotonic() > deadline:
                    raise _TooCostly
                out.append(piece)
            return "".join(out)
    except (_TooCostly, MemoryError):
        raise _too_costly(template) from None
    except Exception as exc:
        what = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"the chat template ({template.source}, sha256 {template.sha256[:12]}) does not render: {what}; "
            "give a working one with --chat-template FILE, or use --prompt-format raw"
        ) from None


def _too_costly(template: ChatTemplate) -> UserError:
    return UserError(
        f"the chat template ({template.source}, sha256 {template.sha256[:12]}) takes too long or writes "
        f"too much to render (past {RENDER_SECONDS:g} s, {MAX_RENDER_CHARS:,} characters or "
        f"{RENDER_MEMORY >> 20} MiB of memory; real templates need milliseconds and kilobytes); give a "
        "working one with --chat-template FILE, or use --prompt-format raw"
    )


def find_framing(template: ChatTemplate, *, bos_token: str, eos_token: str, system: str | None) -> Framing:
    """Split the rendered prompt around the user's content; refuse a template that rewrites
    the content or frames different contents differently. The template is rendered in a child
    process of bounded memory and time (see RENDER_MEMORY), where fork exists."""
    if system is not None and (found := [s for s in SENTINELS if s in system]):
        raise UserError(
            f"the system message contains {found[0]!r}, the text kvprobe renders the chat template with "
            "to find its framing, so the framing cannot be found: remove it from --system (or the "
            "scenario's prompt.system)"
        )

    def work() -> Framing:
        return _find_framing(template, bos_token=bos_token, eos_token=eos_token, system=system)

    return bounded_render(template, work) if hasattr(os, "fork") else work()


def bounded_render(template: ChatTemplate, work: Callable[[], Framing]) -> Framing:
    """`work()` in a forked child whose address space may grow by RENDER_MEMORY at most, its
    answer (a Framing, or a refusal in words) back through a pipe within CHILD_SECONDS."""
    import jinja2.ext
    import jinja2.sandbox  # noqa: F401  imported before the fork: the child finds them loaded

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child (coverage does not follow a fork)
        _child(read_fd, write_fd, template, work)
    os.close(write_fd)
    try:
        data = _read_reply(read_fd)
    finally:
        os.close(read_fd)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)  # nothing if it ended; a child still rendering ends now
            os.waitpid(pid, 0)
    if data is None:
        raise _too_costly(template)
    try:
        reply = json.loads(data)
        if "framing" in reply:
            return Framing(**reply["framing"])
        refusal = str(reply["refused"]) if "refused" in reply else None
        failure = str(reply["failed"])[:200] if refusal is None else ""
    except (ValueError, KeyError, TypeError):
        raise UserError(
            f"the chat template ({template.source}, sha256 {template.sha256[:12]}) ended its renderer "
            "without an answer; give a working one with --chat-template FILE, or use --prompt-format raw"
        ) from None
    raise UserError(
        refusal
        or f"the chat template ({template.source}, sha256 {template.sha256[:12]}) does not render: "
        f"{failure}; give a working one with --chat-template FILE, or use --prompt-format raw"
    )


def _child(read_fd: int, write_fd: int, template: ChatTemplate, work: Callable[[], Framing]) -> NoReturn:
    """The renderer's side: bound its memory, render, write the answer, and end here whatever
    happens (never return into the caller's code)."""
    try:
        os.close(read_fd)
        try:
            gc.disable()  # a collection would touch, and so copy, every page of the parent's objects
            _limit_memory(RENDER_MEMORY)
            reply: dict[str, Any] = {"framing": asdict(work())}
        except UserError as exc:
            reply = {"refused": str(exc)}
        except MemoryError:
            reply = {"refused": str(_too_costly(template))}
        except BaseException as exc:  # anything else is said, and still ends the child here
            reply = {"failed": f"{type(exc).__name__}: {str(exc)[:200]}"}
        _write_all(write_fd, json.dumps(reply).encode())
    finally:
        os._exit(0)


def _limit_memory(extra: int) -> None:
    """Let this process's address space grow by `extra` bytes at most (RLIMIT_AS): an allocation
    past it is a MemoryError, not the machine's memory."""
    import resource

    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            size = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return  # no /proc: the timers still bound the render
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = min([size + extra, *(x for x in (soft, hard) if x != resource.RLIM_INFINITY)])
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_reply(fd: int) -> bytes | None:
    """Everything the child writes, until it closes the pipe; None past CHILD_SECONDS."""
    deadline = time.monotonic() + CHILD_SECONDS
    chunks: list[bytes] = []
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    return None


# Renders a list of chat messages ({"role", "content"}) to the prompt text, generation prompt
# included: kvprobe's Jinja rendering of a template, or an engine's own (a llama-server's
# /apply-template).
Renderer = Callable[[list[dict[str, str]]], str]
TEMPLATE_FIX = "give another template with --chat-template FILE, or use --prompt-format raw"


def _find_framing(template: ChatTemplate, *, bos_token: str, eos_token: str, system: str | None) -> Framing:
    def rendered(messages: list[dict[str, str]]) -> str:
        return render(template, messages, bos_token=bos_token, eos_token=eos_token)

    where = f"the chat template ({template.source}, sha256 {template.sha256[:12]})"
    return split_framing(rendered, where=where, system=system)


def split_framing(rendered: Renderer, *, where: str, system: str | None, fix: str = TEMPLATE_FIX) -> Framing:
    """The framing `rendered` gives: the user's content replaced by two sentinels must come
    through once each, framed alike, with something after it. `where` names the renderer and
    `fix` the way out in the refusals; a generation prompt that opens a thinking block gets it
    closed."""
    splits = []
    for sentinel in SENTINELS:
        messages = [{"role": "system", "content": system}] if system is not None else []
        text = rendered([*messages, {"role": "user", "content": sentinel}])
        if text.count(sentinel) != 1:
            raise UserError(
                f"{where} rewrites the user's message (a test content does not come through unchanged): "
                f"kvprobe would score a prompt other than the one it records; {fix}"
            )
        head, tail = text.split(sentinel)
        splits.append((head, tail))
    if splits[0] != splits[1]:
        raise UserError(
            f"{where} frames different messages differently: kvprobe feeds the document once and must "
            f"know the framing; {fix}"
        )
    prefix, suffix = splits[0]
    if suffix.strip() == "":
        raise UserError(
            f"{where} writes nothing after the user's message (no end of turn, no assistant header): {fix}"
        )
    thinking = "none"
    if suffix.rstrip().endswith(THINK_OPEN):  # the generation prompt opens a thinking block
        suffix = suffix.rstrip() + "\n\n" + THINK_CLOSE + "\n\n"
        thinking = "closed"
    elif THINK_OPEN in suffix and THINK_CLOSE in suffix:
        thinking = "disabled"
    default_system = _default_system(rendered, prefix) if system is None else ""
    return Framing(prefix=prefix, suffix=suffix, thinking=thinking, default_system=default_system)


def _default_system(rendered: Renderer, prefix: str) -> str:
    """The system message the template adds by itself (SmolLM2's "You are a helpful AI
    assistant named SmolLM..."): where a given system message would stand in `prefix`."""
    marker = "KvProbe system sentinel 9c1."
    try:
        text = rendered([{"role": "system", "content": marker}, {"role": "user", "content": SENTINELS[0]}])
    except UserError:
        return ""  # a template without a system role
    if text.count(marker) != 1 or SENTINELS[0] not in text:
        return ""
    before, after = text.split(marker)
    between = after.split(SENTINELS[0])[0]
    if prefix.startswith(before) and prefix.endswith(between) and len(prefix) > len(before) + len(between):
        return prefix[len(before) : len(prefix) - len(between)]
    return ""
