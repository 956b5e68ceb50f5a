"""User-facing errors: one line, exit code 2, never a traceback."""

import difflib
from collections.abc import Callable, Iterable
from typing import TypeVar


class UserError(Exception):
    """Bad input from the user; the message names the problem and the fix. It stays one line
    whatever text from a file it quotes: a line break inside it is written out as \\n."""

    exit_code = 2

    def __init__(self, message: str = "") -> None:
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class Interrupted(UserError):
    """Ctrl-C after something was saved: one line saying where, exit code 130 as for SIGINT."""

    exit_code = 130


class EngineFailure(UserError):
    """An engine outside this process failed or lied (a llama-server that died, stalled or sent
    an answer that fails its checks): one line, exit 2; a run says what it kept to resume."""


class EngineError(RuntimeError):
    """llama.cpp refused something (context creation, decode)."""


_LOOKALIKE = str.maketrans({"o": "0", "l": "1", "i": "1", "-": "_", " ": "_"})


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean q4_0?)' for a near miss, else ''. A letter typed for a look-alike digit
    (q4_o) is matched exactly; otherwise up to three close spellings are offered."""
    options = {c.lower(): c for c in choices}
    key = word.strip().lower()
    exact = [c for low, c in options.items() if low.translate(_LOOKALIKE) == key.translate(_LOOKALIKE)]
    close = exact[:1] or [options[c] for c in difflib.get_close_matches(key, list(options), n=3, cutoff=0.6)]
    return f" (did you mean {' or '.join(c.lower() for c in close)}?)" if close else ""


T = TypeVar("T")


def guarded(errors: list[dict[str, str]], what: str, compute: Callable[[], T]) -> T | None:
    """Run one statistic; a failure is appended to `errors` (the result file's
    `statistics.errors`) instead of losing the measurements it would have summarised."""
    try:
        return compute()
    except Exception as exc:  # any failure of a statistic: the measurements must survive it
        errors.append({"what": what, "error": f"{type(exc).__name__}: {exc}"[:500]})
        return None
