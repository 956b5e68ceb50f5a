"""The engine seam: the llama.cpp engine implements kvprobe.api.engine's protocols (checked at
run time here and by mypy on the typed assignments), the registry finds it by name and refuses
an unknown one in one line, and nothing outside its own package imports it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import kvprobe
from kvprobe import api
from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.engine import Context, ContextSettings, Engine, Model, Quantizer
from kvprobe.engine import DEFAULT_ENGINE, ENGINES, engine_names, get_engine, quantizer
from kvprobe.engine.llamacpp import model as llamacpp_model
from kvprobe.engine.llamacpp.engine import ENGINE, LlamaCppEngine
from kvprobe.infra.errors import UserError

PACKAGE = Path(kvprobe.__file__).parent
CONCRETE = "kvprobe.engine.llamacpp"


def test_the_llamacpp_engine_implements_the_protocol(tiny_model_path: Path) -> None:
    # Typed assignments: mypy checks each class against its protocol, member by member.
    engine: Engine = ENGINE
    quantizing: Quantizer = ENGINE
    assert isinstance(engine, Engine)
    assert isinstance(quantizing, Quantizer)
    assert get_engine("llamacpp") is ENGINE
    assert get_engine() is ENGINE  # the default
    assert quantizer() is ENGINE
    settings = ContextSettings(n_ctx=256, chunk=64, n_threads=2, flash_attn=True, attn_rotation=True)
    with llamacpp_model.Model(tiny_model_path, n_threads=2) as concrete:
        model: Model = concrete
        assert isinstance(model, Model)
        with concrete.context(CacheConfig("q8_0", "q8_0"), settings) as opened:
            context: Context = opened
            assert isinstance(context, Context)
            assert context.applied.type_k == "q8_0"
    with engine.load(tiny_model_path, n_gpu_layers=0, n_threads=2, use_extra_bufts=True) as loaded:
        assert isinstance(loaded, llamacpp_model.Model)
        assert loaded.n_vocab > 0
        assert loaded.n_ctx_train > 0
        assert len(loaded.vocabulary_digest()) == 64
        assert loaded.weight_buffers  # the load log said where the weights went


def test_the_protocol_check_sees_a_missing_method() -> None:
    """The run-time check above means something: a class without one method of the protocol
    does not pass it."""

    class Incomplete(LlamaCppEngine):
        check_kernels = None  # type: ignore[assignment]

    assert isinstance(LlamaCppEngine(), Engine)
    assert not isinstance(Incomplete(), Engine)


@pytest.mark.parametrize(("name", "hint"), [("llama-cpp", "did you mean llamacpp?"), ("vllm", None)])
def test_an_unknown_engine_is_one_line(name: str, hint: str | None) -> None:
    with pytest.raises(UserError) as caught:
        get_engine(name)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"unknown engine {name!r}")
    assert message.endswith("choose one of llamacpp, llama-server")
    assert (hint in message) if hint else "did you mean" not in message


def test_the_registry_is_one_line_per_engine() -> None:
    assert engine_names() == list(ENGINES) == [DEFAULT_ENGINE, "llama-server"]
    module, _, attribute = ENGINES[DEFAULT_ENGINE].partition(":")
    assert module.startswith(CONCRETE + ".")
    assert attribute == "ENGINE"
    assert {"Engine", "Model", "Context", "TeacherForced", "AppliedSettings"} <= set(api.__all__)


def test_the_registry_and_the_pipeline_import_no_engine() -> None:
    """llama_cpp takes seconds to import: the registry, the run pipeline and the quantize
    command import it only when an engine is asked for."""
    modules = ["kvprobe.engine", "kvprobe.run.execute", "kvprobe.run.validate", "kvprobe.cli.quantize"]
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        "print(sorted(m for m in sys.modules if m == 'llama_cpp' or m.startswith('kvprobe.engine.')))\n"
        "import kvprobe.engine\nkvprobe.engine.get_engine()\nprint('llama_cpp' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = proc.stdout.splitlines()
    assert before == "[]"
    assert after == "True"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement of `path` names (function-local ones too)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _concrete(name: str) -> bool:
    return name.partition(".")[0] == "llama_cpp" or name == CONCRETE or name.startswith(CONCRETE + ".")


def test_nothing_outside_the_llamacpp_package_imports_it() -> None:
    inside = PACKAGE / "engine" / "llamacpp"
    files = sorted(PACKAGE.rglob("*.py"))
    outside = [p for p in files if inside not in p.parents]
    offending = [
        f"{p.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for p in outside
        for line, name in _imports(p)
        if _concrete(name)
    ]
    assert not offending, "\n".join(offending)
    # The scan sees imports: the engine's own package does import llama_cpp.
    assert len(outside) > 100
    assert any(_concrete(name) for p in inside.glob("*.py") for _, name in _imports(p))
