"""`kvprobe run`: the command: --resume's options from the journal, the result path's lock and
journal, then the request validated (kvprobe.run.validate) and executed (kvprobe.run.execute).
Its options are kvprobe.run.options' (`add_parser`), which a sweep's cells are read with too."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import refuse_if_locked, same_file
from kvprobe.plan.scenario import bundled_scenarios
from kvprobe.result.journal import SUFFIX, SavedRun, journal_path, read_journal
from kvprobe.result.store import load_result
from kvprobe.run.execute import run_request
from kvprobe.run.options import add_parser, run_parser
from kvprobe.run.validate import uses_ladder, validate_run

__all__ = ["add_parser", "cmd_run", "run_parser"]


def cmd_run(args: argparse.Namespace, console: Console, words: list[str]) -> int:
    """`kvprobe run`: the options (a --resume's from its journal), the result path free, the
    request validated, then executed with a journal and written."""
    command_start = time.monotonic()  # --time-budget counts from here: hashing and loading too
    saved = None
    if args.resume:
        args, saved = resume_args(args, words)
    if args.out:
        refuse_if_locked(Path(args.out))  # a run writing it now is the real problem, if there is one
    if not args.resume and args.out and journal_path(Path(args.out)).exists() and not args.force:
        raise UserError(
            f"{journal_path(Path(args.out))} holds an interrupted run: continue it with "
            f"`kvprobe run --resume {journal_path(Path(args.out))}`, or pass --force to start again"
        )
    request = validate_run(args)
    return run_request(
        request,
        saved=saved,
        console=console,
        argv=words[words.index("run") + 1 :],
        command_start=command_start,
    )


# Options of this invocation only, never compared with the journal's.
CARRIED = frozenset({"resume", "time_budget", "force", "html", "no_html"})
PATH_OPTIONS = frozenset({"model", "scenario", "haystack", "chat_template"})  # compared as files
# Options kvprobe chooses when they are not given, and the identity field that records its choice.
CHOSEN = {"threads": "n_threads", "gpu_layers": "n_gpu_layers", "max_contexts": "max_contexts"}


def typed_options(words: list[str]) -> dict[str, Any]:
    """The `run` options the command line gives, by name, as parsed: abbreviations and
    --option=value count, and an option typed with its default value counts too (argparse
    fills in no default here)."""
    parser = run_parser()
    section = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    for action in section._actions:
        action.default = argparse.SUPPRESS
    typed, _ = parser.parse_known_args(words)
    return {k: v for k, v in vars(typed).items() if k != "command"}


def comparable(key: str, value: Any, folder: Path) -> Any:
    """An option's value as the run understood it: a file named relative to `folder` (where
    the command ran) as its real path; a bundled scenario or haystack by its name."""
    if isinstance(value, list):
        return [comparable(key, v, folder) for v in value]
    if key not in PATH_OPTIONS or not isinstance(value, str):
        return value
    if (key == "scenario" and value in bundled_scenarios()) or (
        key == "haystack" and value in ("prose", "noise")
    ):
        return value
    return os.path.realpath(folder / Path(value).expanduser())


def resume_args(args: argparse.Namespace, words: list[str]) -> tuple[argparse.Namespace, SavedRun]:
    """For `--resume PATH`: the journal, and the options to run with: the journal's own, read
    with relative paths taken from the folder the run started in. Options typed with --resume
    must say what the journal says (else one line names them); --out must be the run's own."""
    given = Path(args.resume).expanduser().absolute()  # before a chdir to where the run started
    if args.html:
        args.html = str(Path(args.html).expanduser().absolute())
    here = Path.cwd()
    typed = {k: comparable(k, v, here) for k, v in typed_options(words).items() if k not in CARRIED}
    out_given = typed.pop("out", None)
    saved = read_journal(given if given.name.endswith(SUFFIX) else journal_path(given))
    args.resume = str(saved.path)  # the journal, whichever of the two names was given
    args = saved_args(saved, run_parser(), args, set(CARRIED))
    started_in = Path(saved.header["cwd"])
    identity = saved.header["identity"]
    if uses_ladder(args) and identity.get("configs") == [identity.get("baseline")]:
        # A journal from before a run without --cache measured the ladder: it measured the
        # reference alone, as `--cache f16` now does.
        args.cache = list(identity["configs"])
    conflicts = [
        f"{key} ({brief(then)} then, {brief(now)} now)"
        for key, now in typed.items()
        if (then := comparable(key, getattr(args, key, None), started_in)) != now
        # an option the run left to kvprobe, typed now as kvprobe chose it (--threads 16)
        and not (then is None and key in CHOSEN and identity.get(CHOSEN[key]) == now)
    ]
    if conflicts:
        raise UserError(
            f"--resume {saved.path} is the journal of another request: {'; '.join(conflicts)}: drop those "
            "options (the journal has the run's own), or start again without --resume"
        )
    if args.max_contexts is None:
        # The groups the run started with (chosen for the memory then, perhaps): its units are
        # theirs. A run that started in one group stays in one.
        args.max_contexts = saved.header["identity"].get("max_contexts")
        args.one_group = args.max_contexts is None
    out = Path(saved.header["out"])
    if out_given is not None and Path(out_given).resolve() != out:
        raise UserError(f"--resume {saved.path} continues the run that writes {out}: drop --out or give that")
    args.out = str(out)
    if not same_file(saved.path, journal_path(out)):
        raise UserError(
            f"--resume {saved.path}: its run writes {out}, whose journal is {journal_path(out)}, not this "
            "file: resume from the journal beside the result, or start the run again"
        )
    # Only the run's own partial result is replaced without --force: a journal never makes
    # kvprobe overwrite a file that some other run, or the user, put there.
    args.out_is_partial = is_partial_result(out, saved.header)
    return args, saved


def brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def saved_args(
    saved: SavedRun, parser: argparse.ArgumentParser, args: argparse.Namespace, carried: set[str]
) -> argparse.Namespace:
    """The original options, read from the folder the run started in: relative paths (model,
    scenario, haystack) then mean what they meant, and the scenario hashes the same; the
    `carried` options are this invocation's."""
    started_in = Path(saved.header["cwd"])
    try:
        os.chdir(started_in)
    except OSError:
        raise UserError(
            f"--resume {saved.path}: the run started in {started_in}, which is gone; give the original "
            "options again with --resume"
        ) from None
    resumed = parser.parse_args(["run", *saved.header["argv"]])
    for key in carried:
        setattr(resumed, key, getattr(args, key))
    return resumed


def is_partial_result(out: Path, header: dict[str, Any]) -> bool:
    """Whether `out` is the result file the journal's run wrote before it stopped: a kvprobe
    result with the same start time and model."""
    if not out.is_file():
        return False
    try:
        doc = load_result(out)
    except UserError:
        return False
    models = header["identity"].get("models_sha256") or [None]
    return bool(doc.get("created") == header.get("created") and doc["model"].get("sha256") == models[0])
