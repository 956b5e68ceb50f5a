"""The command-line reference (docs/cli.md), generated from the argparse parser itself, so it
cannot drift from the options that exist: `python -m kvprobe.cli.reference > docs/cli.md`;
the tests regenerate it and compare."""

from __future__ import annotations

import argparse
import html
import re
import sys
import textwrap

from kvprobe.cli.app import COMMANDS, build_parser

HEADER = """# Command-line reference

Generated from kvprobe's own argument parser (`python -m kvprobe.cli.reference > docs/cli.md`);
the tests fail when an option is missing here or named here without existing. Every command
ends bad input with one line on stderr and exit code 2.
"""


def _cell(text: str) -> str:
    """One table cell: one line, its bars escaped, `<out>` shown rather than taken for HTML."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def _option(action: argparse.Action) -> tuple[str, str, str]:
    """Its spellings (with the argument's name), its default, its help."""
    if action.option_strings:
        spelled = ", ".join(f"`{s}`" for s in action.option_strings)
        if action.nargs != 0 and not isinstance(action, argparse.BooleanOptionalAction):
            spelled += f" `{action.metavar or action.dest.upper()}`"
    else:
        spelled = f"`{action.metavar or action.dest}`" + (" (optional)" if action.nargs == "?" else "")
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        spelled += " (" + " \\| ".join(f"`{c}`" for c in action.choices) + ")"
    default = action.default
    shown = "" if default in (None, False, [], argparse.SUPPRESS) else f"`{default}`"
    return spelled, shown, _cell(action.help or "")


def command_reference(name: str, parser: argparse.ArgumentParser) -> str:
    lines = [f"## `kvprobe {name}`", "", _cell(parser.description or parser_help(name)), ""]
    usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    # Wrapped to fit the docs site's code column (tests/cli/test_docs.py: CODE_COLUMN).
    options = [w.replace(" ", "\0") for w in re.findall(r"\[[^\]]*\]|\S+", usage)]  # never break inside [...]
    usage = textwrap.fill(
        " ".join(options), 100, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False
    )
    usage = usage.replace("\0", " ")
    lines += ["```", usage, "```", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        titles = {"positional arguments": "Arguments", "options": "Options"}
        title = titles.get(group.title or "", group.title)
        lines += [f"**{title}**", "", "| option | default | meaning |", "|---|---|---|"]
        lines += ["| {} | {} | {} |".format(*_option(a)) for a in actions]
        lines.append("")
    return "\n".join(lines)


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices.items())


def parser_help(name: str) -> str:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next((c.help or "" for c in action._choices_actions if c.dest == name), "")


def reference() -> str:
    parts = [HEADER]
    for name, parser in subparsers().items():
        parts.append(command_reference(name, parser))
    assert list(subparsers()) == list(COMMANDS)
    return "\n".join(parts).rstrip() + "\n"


def documented_options() -> dict[str, set[str]]:
    """Per command, every option string its parser accepts (what the reference must name)."""
    return {
        name: {s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}
        for name, parser in subparsers().items()
    }


if __name__ == "__main__":
    sys.stdout.write(reference())
