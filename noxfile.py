"""nox sessions. CI runs lint, typecheck, tests and compare (the gate on a saved result)
through .ci/run; `nox -s bench` (minutes, timing figures) runs only when asked."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "compare"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """All tests, including the slow ones on the real default model."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "kvprobe", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "kvprobe", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def compare(session: nox.Session) -> None:
    """How CI gates on a saved result: run the quick scenario now and compare it with the
    committed one; exit 1 on a significant accuracy drop of more than 0.05 or a KL rise of
    more than 0.01 (`kvprobe compare` reads only the two files)."""
    session.install("-e", ".[model]")
    new = f"{session.create_tmp()}/quick-f16-q8_0-1024.json"
    session.run(
        "kvprobe", "run", "--scenario", "quick", "--cache", "q8_0", "--ctx", "1024", "--out", new, "--force"
    )
    session.run(
        "kvprobe", "compare", "results/examples/quick-f16-q8_0-1024.json", new,
        "--fail-on", "accuracy:-0.05", "--fail-on", "kld_mean:+0.01",
    )  # fmt: skip


@nox.session
def bench(session: nox.Session) -> None:
    """What kvprobe costs (benchmarks/bench.py): tokens saved, time outside llama_decode, peak
    RSS against the estimate, and where the time goes; JSON to results/bench/. Timings: run
    it on a quiet machine."""
    session.install("-e", ".[model]")
    session.run("python", "benchmarks/bench.py", *session.posargs)
