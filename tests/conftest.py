from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tiny_model import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path: Path) -> Iterator[object]:
    from kvprobe.engine import Model

    with Model(tiny_model_path, n_gpu_layers=0, n_threads=2) as model:
        yield model


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    try:
        from kvprobe.errors import UserError
        from kvprobe.provenance import default_model_path as find

        return find()
    except UserError as exc:  # pragma: no cover - depends on the install
        pytest.skip(f"default model not installed: {exc}")
