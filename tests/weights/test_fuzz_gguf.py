"""Property tests of the GGUF readers (issue 23): valid files, written with the `gguf` package,
then mutated where the readers' checks are (a count or length set to anything, a value's type
changed, a byte flipped, the file cut short, a hyperparameter set to anything). Every outcome is
a one-line UserError, or a read whose facts equal the unmutated file's wherever the mutation
did not reach them; none hangs. In-process (read_facts, load_imatrix), so each example is fast.

`nox -s fuzz` runs them with more examples (KVPROBE_FUZZ_EXAMPLES)."""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from kvprobe.infra.display import SafeConsole
from kvprobe.infra.errors import UserError
from kvprobe.views.doctor import print_doctor
from kvprobe.weights.doctor import SOURCE_TYPE_KEY, findings, kv_table, read_facts
from kvprobe.weights.hparams import LLAMA_MAX_EXPERTS, LLAMA_MAX_LAYERS, MAX_CONTEXT, MAX_HEAD_DIM
from kvprobe.weights.model_info import forget_headers
from kvprobe.weights.quantize import load_imatrix
from tests.helpers import Spec, T, imatrix_metadata, write_gguf, write_tiny_imatrix, write_tiny_model

pytestmark = pytest.mark.fuzz
V = gguf.GGUFValueType
SCALAR = {V.UINT8: 1, V.INT8: 1, V.BOOL: 1, V.UINT16: 2, V.INT16: 2, V.UINT32: 4, V.INT32: 4,
          V.FLOAT32: 4, V.UINT64: 8, V.INT64: 8, V.FLOAT64: 8}  # fmt: skip
EXTRAS: dict[str, Any] = {  # a value of every type, so that every kind of field gets mutated
    "kvprobe.fuzz.u8": (V.UINT8, 7),
    "kvprobe.fuzz.i16": (V.INT16, -7),
    "kvprobe.fuzz.u64": 2**40,
    "kvprobe.fuzz.f64": (V.FLOAT64, 0.25),
    "kvprobe.fuzz.bools": [True, False, True],
    "kvprobe.fuzz.nested": (V.ARRAY, [[1, 2], [3]], V.ARRAY),
    "kvprobe.fuzz.i64s": (V.ARRAY, [1, -2], V.INT64),
    "llama.attention.sliding_window": 64,
    "general.basename": "kvprobe-tiny",
    SOURCE_TYPE_KEY: "MOSTLY_F16",
    "quantize.imatrix.file": "tiny.imatrix.gguf",
    "quantize.imatrix.entries_count": 14,
}

# --- where the fields are: an independent walk of a valid file -------------------------------


@dataclass(frozen=True)
class Field:
    offset: int
    width: int
    kind: str  # count | length | type | dim | offset | value | text
    owner: str  # a metadata key, "tensor:NAME", or "header"


def _fields(data: bytes) -> list[Field]:
    """Every field of a valid little-endian GGUF header, in file order."""
    out: list[Field] = []
    pos = 4

    def take(width: int, kind: str, owner: str) -> int:
        nonlocal pos
        out.append(Field(pos, width, kind, owner))
        value = int.from_bytes(data[pos : pos + width], "little") if width in (1, 2, 4, 8) else 0
        pos += width
        return value

    def text(owner: str) -> str:
        n = take(8, "length", owner)
        raw = data[pos : pos + n]
        if n:
            take(n, "text", owner)
        return raw.decode()

    def value(vtype: int, owner: str) -> None:
        if vtype in SCALAR:
            take(SCALAR[V(vtype)], "value", owner)
        elif vtype == V.STRING:
            text(owner)
        else:
            itype, count = take(4, "type", owner), take(8, "count", owner)
            for _ in range(count):
                value(itype, owner)

    take(4, "type", "header")  # the version
    n_tensors, n_kv = take(8, "count", "header"), take(8, "count", "header")
    for _ in range(n_kv):
        key = text("header")  # a changed name is a changed structure
        value(take(4, "type", key), key)
    for _ in range(n_tensors):
        name = text("header")
        owner = f"tensor:{name}"
        dims = take(4, "count", owner)
        for _ in range(dims):
            take(8, "dim", owner)
        take(4, "type", owner)
        take(8, "offset", owner)
    return out


@dataclass(frozen=True, repr=False)
class Base:
    """A valid file as header bytes over a sparse data region (the doctor reads no data)."""

    name: str
    header: bytes
    size: int
    data_end: int  # where the last tensor's data ends: a cut before it must be refused
    fields: list[Field]
    facts: dict[str, Any]

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"Base({self.name})"


def _base(name: str, path: Path) -> Base:
    reader = gguf.GGUFReader(str(path))
    header = path.read_bytes()[: reader.data_offset]
    end = max(t.data_offset + int(t.n_bytes) for t in reader.tensors)
    return Base(name, header, path.stat().st_size, end, _fields(header), read_facts(path))


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> list[Base]:
    folder = tmp_path_factory.mktemp("fuzz-bases")
    tiny = write_tiny_model(folder / "tiny.gguf", metadata=EXTRAS)
    spec = Spec(gguf.LlamaFileType.MOSTLY_Q4_K_M, T.Q4_K, output=T.Q6_K)
    spec.metadata = imatrix_metadata(spec)
    quantized = write_gguf(folder / "q4km.gguf", spec)
    return [_base("tiny", tiny), _base("q4km", quantized)]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Iterator[Path]]:
    """A new file name per example: the header cache keys on (path, mtime, size), and a file
    rewritten within one clock tick would look unchanged."""
    folder = tmp_path_factory.mktemp("fuzz")
    yield (folder / f"{i}.gguf" for i in itertools.count())
    forget_headers()


def _write(path: Path, header: bytes, size: int) -> Path:
    with path.open("wb") as fh:
        fh.write(header[:size])
    os.truncate(path, size)
    return path


# --- what a mutation may change --------------------------------------------------------------

LAYOUT = {"n_layer", "n_head_kv", "head_dim_k", "head_dim_v", "swa_layers"}
TENSOR_FACTS = {
    "n_params", "bits_per_weight", "weights_bytes", "tensor_types", "token_embd_type", "output_type",
    "block_weight_tensors", "bulk_type", "weight_types", "n_vocab",
}  # fmt: skip
DEPENDS: dict[str, set[str]] = {
    "general.name": {"general_name"},
    "general.basename": {"basename"},
    "general.file_type": {"file_type"},
    "llama.context_length": {"n_ctx_train"},
    "llama.embedding_length": {"n_embd", "head_dim_k", "head_dim_v"},
    "llama.block_count": LAYOUT,
    "llama.attention.head_count": LAYOUT,
    "llama.attention.head_count_kv": {"n_head_kv"},
    "llama.attention.key_length": {"head_dim_k"},
    "llama.attention.value_length": {"head_dim_v"},
    "llama.attention.sliding_window": {"n_swa", "swa_layers"},
    "llama.expert_count": {"n_experts"},
    "llama.expert_used_count": {"n_experts_used"},
    SOURCE_TYPE_KEY: {"source_file_type"},
    **{k: {"imatrix"} for k in imatrix_metadata(Spec(gguf.LlamaFileType.ALL_F32, T.F32))},
}
STRUCTURAL = {"header", "general.architecture", "general.alignment"}  # a change moves everything


def _may_change(field: Field) -> set[str] | None:
    """The facts a mutation of `field` may change; None: any (it moves what follows)."""
    if field.owner in STRUCTURAL or field.kind in ("count", "length", "type"):
        return None
    if field.owner.startswith("tensor:"):
        return TENSOR_FACTS
    return DEPENDS.get(field.owner, set())


def _sane(facts: dict[str, Any]) -> None:
    """What every accepted file's facts satisfy, and the report built from them renders."""
    assert 0 <= facts["n_layer"] <= LLAMA_MAX_LAYERS
    assert len(facts["n_head_kv"]) == len(facts["swa_layers"]) == facts["n_layer"]
    assert 0 <= facts["n_ctx_train"] <= MAX_CONTEXT
    assert 0 <= facts["head_dim_k"] <= MAX_HEAD_DIM
    assert 0 <= facts["head_dim_v"] <= MAX_HEAD_DIM
    assert 0 <= facts["n_experts_used"] <= facts["n_experts"] <= LLAMA_MAX_EXPERTS
    assert facts["file_type"] is None or facts["file_type"] in gguf.LlamaFileType.__members__
    report = {
        "facts": facts,
        "findings": [asdict(f) for f in findings(facts)],
        "kv_cache": kv_table(facts, 24.0),
    }
    out = io.StringIO()
    print_doctor({**report, "vram_gb": 24.0}, SafeConsole(file=out, width=200))
    assert "\x1b" not in out.getvalue()


def _one_line(err: UserError, prefix: str) -> None:
    message = str(err)
    assert message.startswith(prefix), message
    assert "\n" not in message, message
    assert "\r" not in message, message
    assert len(message) < 2000, message


def _outcome(path: Path) -> dict[str, Any] | str:
    """The facts, or the refusal's message once it is checked to be one line."""
    try:
        return read_facts(path)
    except UserError as err:
        _one_line(err, "model file")
        return str(err)


def _read(path: Path) -> dict[str, Any] | None:
    """The facts, or None for a (one-line) refusal; `--hypothesis-show-statistics` counts them."""
    outcome = _outcome(path)
    event("refused" if isinstance(outcome, str) else "read")
    return None if isinstance(outcome, str) else outcome


def _same_except(facts: dict[str, Any], base: dict[str, Any], changed: set[str]) -> None:
    for key in base.keys() - changed - {"path", "name"}:
        assert facts[key] == base[key], key


# --- the properties --------------------------------------------------------------------------


def _field(data: st.DataObject, fields: list[Field], numbers_only: bool) -> Field:
    """A field, its kind drawn first: the few tensor dims and offsets get as many draws as
    the thousands of vocabulary strings."""
    fields = [f for f in fields if f.width in (4, 8) and f.kind != "text"] if numbers_only else fields
    kind = data.draw(st.sampled_from(sorted({f.kind for f in fields})))
    return data.draw(st.sampled_from([f for f in fields if f.kind == kind]))


INTERESTING = [
    0, 1, 2, 3, 4, 8, 9, 12, 13, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**60, 2**63, 2**64 - 1,
]  # fmt: skip


@st.composite
def _new_value(draw: st.DrawFn, field: Field, original: int) -> int:
    top = 2 ** (8 * field.width) - 1
    return draw(
        st.one_of(
            st.sampled_from([v for v in INTERESTING if v <= top]),
            st.integers(max(0, original - 3), min(top, original + 3)),
            st.integers(0, top),
        )
    )


@given(data=st.data())
def test_a_field_set_to_anything(bases: list[Base], scratch: Iterator[Path], data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(bases))
    field = _field(data, base.fields, numbers_only=True)
    original = int.from_bytes(base.header[field.offset : field.offset + field.width], "little")
    value = data.draw(_new_value(field, original))
    header = bytearray(base.header)
    header[field.offset : field.offset + field.width] = value.to_bytes(field.width, "little")
    facts = _read(_write(next(scratch), bytes(header), base.size))
    if field.kind in ("count", "length") and value > base.size:
        assert facts is None  # more than the file holds: refused, never walked
    if facts is not None:
        _sane(facts)
        changed = _may_change(field)
        if changed is not None:
            _same_except(facts, base.facts, changed)
    if value == original:  # the file unchanged: so are its facts
        assert facts is not None
        _same_except(facts, base.facts, set())


@given(data=st.data())
def test_a_byte_flipped(bases: list[Base], scratch: Iterator[Path], data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(bases))
    field = _field(data, base.fields, numbers_only=False)
    at = data.draw(st.integers(field.offset, field.offset + field.width - 1))
    header = bytearray(base.header)
    header[at] ^= data.draw(st.integers(1, 255))
    facts = _read(_write(next(scratch), bytes(header), base.size))
    if facts is not None:
        _sane(facts)
        changed = _may_change(field)
        if changed is not None:
            _same_except(facts, base.facts, changed)


@given(data=st.data())
def test_cut_short(bases: list[Base], scratch: Iterator[Path], data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(bases))
    cut = data.draw(
        st.one_of(
            st.integers(0, len(base.header) + 64),  # in the header
            st.integers(0, base.size),
            st.integers(base.data_end - 1, base.size),  # the last tensor's last byte, or its padding
        )
    )
    facts = _read(_write(next(scratch), base.header, cut))
    if cut < base.data_end:
        assert facts is None  # something the header promises is missing
    else:
        assert facts is not None  # only padding went
        _same_except(facts, base.facts, set())


HPARAMS = [
    "llama.block_count", "llama.context_length", "llama.embedding_length", "llama.attention.head_count",
    "llama.attention.head_count_kv", "llama.attention.key_length", "llama.attention.value_length",
    "llama.attention.sliding_window", "llama.attention.sliding_window_pattern", "llama.expert_count",
    "llama.expert_used_count", "general.file_type", "general.architecture", "quantize.imatrix.entries_count",
]  # fmt: skip
# A refusal may name the key a value was derived from.
RELATED = {
    "llama.embedding_length": ("llama.attention.key_length",),
    "llama.attention.head_count": ("llama.attention.head_count_kv", "llama.attention.key_length"),
    "llama.attention.head_count_kv": ("llama.attention.head_count",),
    "llama.expert_count": ("llama.expert_used_count",),
    "general.architecture": ("block_count",),
}
EXPECTED = {  # on success, the fact the value sets
    "llama.block_count": lambda f: f["n_layer"],
    "llama.context_length": lambda f: f["n_ctx_train"],
    "llama.embedding_length": lambda f: f["n_embd"],
    "llama.attention.key_length": lambda f: f["head_dim_k"],
    "llama.attention.value_length": lambda f: f["head_dim_v"],
    "llama.attention.sliding_window": lambda f: f["n_swa"],
    "llama.expert_count": lambda f: f["n_experts"],
}

_ints = st.one_of(
    st.sampled_from([0, 1, 2, 3, 7, 8, 64, 512, 513, 4096, 2**31, 2**32 - 1, 4_000_000_000]),
    st.integers(-(2**31), 2**31 - 1),
)
_typed = st.one_of(
    _ints.map(lambda v: (V.INT32, v) if v < 2**31 else (V.UINT32, v)),
    st.integers(0, 2**64 - 1).map(lambda v: (V.UINT64, v)),
    st.integers(-(2**63), -1).map(lambda v: (V.INT64, v)),
    st.floats(width=32).map(lambda v: (V.FLOAT32, v)),
    st.booleans(),
    st.text(max_size=8),
    st.lists(st.integers(-3, 9), max_size=5).map(lambda v: (V.ARRAY, v, V.INT32) if v else None),
    st.none(),
)


def _small(metadata: dict[str, Any]) -> Spec:
    return Spec(gguf.LlamaFileType.MOSTLY_Q8_0, T.Q8_0, n_layer=2, n_embd=256, n_vocab=256, metadata=metadata)


@pytest.fixture(scope="module")
def small_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return read_facts(write_gguf(tmp_path_factory.mktemp("fuzz-small") / "small.gguf", _small({})))


@given(data=st.data())
def test_a_hyperparameter_set_to_anything(
    small_facts: dict[str, Any], scratch: Iterator[Path], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(HPARAMS))
    value = data.draw(_typed)
    facts = _outcome(write_gguf(next(scratch), _small({key: value})))
    event("refused" if isinstance(facts, str) else "read")
    if isinstance(facts, str):  # refused: the line names the key (or the one it sets)
        assert any(k in facts for k in (key, *RELATED.get(key, ()))), (key, facts)
        return
    _sane(facts)
    changed = DEPENDS.get(key, LAYOUT) | ({"imatrix"} if key.startswith("quantize.") else set())
    _same_except(facts, small_facts, changed)
    if key in EXPECTED and isinstance(value, tuple) and value[0] not in (V.FLOAT32, V.ARRAY):
        assert EXPECTED[key](facts) == value[1]


# --- the imatrix reader ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def imatrix(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[bytes, dict[str, np.ndarray], list[Field], int]:
    folder = tmp_path_factory.mktemp("fuzz-imatrix")
    path = write_tiny_imatrix(folder / "tiny.imatrix.gguf", write_tiny_model(folder / "tiny.gguf"))
    reader = gguf.GGUFReader(str(path))
    raw = path.read_bytes()
    return raw, load_imatrix(path)[0], _fields(raw[: reader.data_offset]), reader.data_offset


@given(data=st.data())
def test_a_damaged_imatrix(
    imatrix: tuple[bytes, dict[str, np.ndarray], list[Field], int],
    scratch: Iterator[Path],
    data: st.DataObject,
) -> None:
    raw, expected, fields, data_start = imatrix
    mutated = bytearray(raw)
    how = data.draw(st.sampled_from(["field", "flip", "cut"]))
    if how == "field":
        field = data.draw(st.sampled_from([f for f in fields if f.width in (4, 8) and f.kind != "text"]))
        value = data.draw(st.sampled_from([v for v in INTERESTING if v < 2 ** (8 * field.width)]))
        mutated[field.offset : field.offset + field.width] = value.to_bytes(field.width, "little")
    elif how == "flip":
        mutated[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    else:
        del mutated[data.draw(st.integers(0, len(raw) - 1)) :]
    path = next(scratch)
    path.write_bytes(bytes(mutated))
    try:
        found, metadata = load_imatrix(path)
    except UserError as err:
        _one_line(err, "--imatrix")
        event("refused")
        return
    event("read")
    assert found, "an accepted imatrix has data"
    for name, values in found.items():
        assert np.isfinite(values).all(), name
        assert (values >= 0).all(), name
    if how == "flip" and mutated[:data_start] == raw[:data_start]:  # only data changed
        assert found.keys() == expected.keys()
        assert sum(not np.array_equal(found[k], expected[k]) for k in found) <= 1
    assert isinstance(metadata["quantize.imatrix.entries_count"], int)


def test_the_field_walk_sees_every_field(bases: list[Base]) -> None:
    """The mutations reach what the readers check: counts, lengths, types, dims and offsets of
    metadata and tensors, for both files."""
    for base in bases:
        kinds = {f.kind for f in base.fields}
        assert kinds == {"count", "length", "type", "dim", "offset", "value", "text"}, base.name
        assert any(f.owner == "llama.block_count" and f.kind == "value" for f in base.fields)
        n_tensors = sum(t["tensors"] for t in base.facts["tensor_types"].values())
        assert sum(f.kind == "offset" for f in base.fields) == n_tensors
