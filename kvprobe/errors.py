"""User-facing errors: one line, exit code 2, never a traceback."""


class UserError(Exception):
    """Bad input from the user; the message names the problem and the fix."""

    exit_code = 2


class EngineError(RuntimeError):
    """llama.cpp refused something (context creation, decode)."""
