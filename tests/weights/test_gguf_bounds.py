"""Issue 23: every count and length a GGUF header holds is checked against the file before
anything is allocated or iterated (`weights/gguf_header`), and implausible hyperparameters are
refused (`weights/hparams`). Each case, through `doctor`, `run --model` and `quantize`
(and `quantize --imatrix`): one line on stderr, exit code 2, nothing on disk changed."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from kvprobe.infra.errors import UserError
from kvprobe.weights import gguf_header
from kvprobe.weights.doctor import SOURCE_TYPE_KEY, read_facts
from tests.helpers import (
    Spec,
    T,
    assert_one_line_error,
    kvprobe,
    raw_gguf,
    raw_kv,
    raw_string,
    raw_tensor,
    write_gguf,
    write_tiny_imatrix,
    write_tiny_model,
)

V = gguf.GGUFValueType
F = gguf.LlamaFileType
HUGE = 2**60
TOKENS = "tokenizer.ggml.tokens"


def reproduction() -> bytes:
    """The issue's 133-byte file: tokenizer.ggml.tokens claims 2^60 uint32 entries."""
    k = TOKENS.encode()
    return b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, len(k)) + k + struct.pack("<IIQ", 9, 4, HUGE) + bytes(64)


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    found = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            with p.open("rb") as fh:
                head = fh.read(1 << 20)  # sparse header-only files: their header is their content
            found[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(head).hexdigest())
    return found


COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "doctor": lambda m: ["doctor", str(m)],
    "run": lambda m: ["run", "--model", str(m), "--ctx", "512", "--out", str(m.parent / "r.json")],
    "quantize": lambda m: ["quantize", str(m), "--type", "Q4_0"],  # next to the source
}


def refused_everywhere(model: Path, *words: str, commands: tuple[str, ...] = tuple(COMMANDS)) -> None:
    """Each command refuses `model` in one line holding `words`, quickly, touching nothing."""
    for command in commands:
        before = _snapshot(model.parent)
        start = time.monotonic()
        proc = kvprobe(*COMMANDS[command](model))
        assert time.monotonic() - start < 60, command  # bounded: no walk over a claimed 2^60
        assert_one_line_error(proc, *words)
        assert _snapshot(model.parent) == before, command


def _file(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- defect 1: unbounded counts and lengths ---------------------------------------------------


def test_the_reproduction_is_refused_by_doctor_run_and_quantize(tmp_path: Path) -> None:
    model = _file(tmp_path, reproduction(), "a.gguf")
    assert model.stat().st_size == 133
    refused_everywhere(
        model, f"metadata {TOKENS} claims {HUGE} entries", "only 133 bytes", "download it again"
    )


@pytest.mark.parametrize("element", list(V), ids=lambda v: v.name)
def test_an_array_of_any_element_type_claiming_2_60_entries(tmp_path: Path, element: V) -> None:
    kv = raw_kv("kvprobe.test.array", V.ARRAY, struct.pack("<IQ", element, HUGE))
    model = _file(tmp_path, raw_gguf([kv]))
    refused_everywhere(model, "kvprobe.test.array claims", str(HUGE), commands=("doctor",))


def _len(n: int) -> bytes:
    return struct.pack("<Q", n)


def _nested(depth: int, inner_count: int) -> bytes:
    """`depth` arrays, each holding one array, around an array of `inner_count` uint8."""
    payload = struct.pack("<IQ", V.UINT8, inner_count) + bytes(min(inner_count, 4))
    for _ in range(depth):
        payload = struct.pack("<IQ", V.ARRAY, 1) + payload
    return payload


STRUCTURE: dict[str, tuple[Callable[[], bytes], tuple[str, ...]]] = {
    "metadata count 2^60": (lambda: raw_gguf(n_kv=HUGE), ("metadata count claims", str(HUGE))),
    "tensor count 2^60": (lambda: raw_gguf(n_tensors=HUGE), ("tensor count claims", str(HUGE))),
    "key length 2^60": (
        lambda: raw_gguf([struct.pack("<Q", HUGE) + b"general.name"]),
        ("name of metadata entry 0 claims", str(HUGE)),
    ),
    "string value length 2^60": (
        lambda: raw_gguf([raw_kv("general.name", V.STRING, struct.pack("<Q", HUGE) + b"x")]),
        ("metadata general.name claims", str(HUGE)),
    ),
    "one string of a string array runs past the end": (
        lambda: raw_gguf(
            [raw_kv(TOKENS, V.ARRAY, struct.pack("<IQ", V.STRING, 2) + raw_string("a") + _len(100))]
        ),
        (f"metadata {TOKENS} entry 1 runs past the end", "truncated"),
    ),
    "an array of arrays whose inner array claims 2^60": (
        lambda: raw_gguf([raw_kv("kvprobe.nested", V.ARRAY, _nested(2, HUGE))]),
        ("kvprobe.nested claims", str(HUGE)),
    ),
    "arrays nested 20 deep": (
        lambda: raw_gguf([raw_kv("kvprobe.nested", V.ARRAY, _nested(20, 1))]),
        ("kvprobe.nested nests arrays",),
    ),
    "array elements over the cap": (
        lambda: raw_gguf(
            [raw_kv("kvprobe.big", V.ARRAY, struct.pack("<IQ", V.UINT8, gguf_header.MAX_ARRAY_ELEMENTS + 1))],
            data=bytes(gguf_header.MAX_ARRAY_ELEMENTS + 1),
        ),
        ("kvprobe.big", "more than the 8,388,608 kvprobe reads"),
    ),
    "unknown value type": (
        lambda: raw_gguf([raw_kv("general.name", 13, b"")]),
        ("general.name", "value type 13"),
    ),
    "unknown array element type": (
        lambda: raw_gguf([raw_kv("kvprobe.a", V.ARRAY, struct.pack("<IQ", 99, 1))]),
        ("kvprobe.a", "value type 99"),
    ),
    "a key twice": (
        lambda: raw_gguf([raw_kv("general.name", V.UINT8, b"\0")] * 2),
        ("metadata general.name appears twice",),
    ),
    "an empty key": (lambda: raw_gguf([raw_kv("", V.UINT8, b"\0")]), ("metadata entry 0 has an empty name",)),
    "a key that is not UTF-8": (lambda: raw_gguf([raw_kv(b"\xff\xfe", V.UINT8, b"\0")]), ("not UTF-8",)),
    "version 1": (lambda: raw_gguf(version=1), ("GGUF version 1",)),
    "version 99": (lambda: raw_gguf(version=99), ("GGUF version 99",)),
    "too short for a header": (lambda: b"GGUF\x03\0\0\0\0\0", ("too few for a GGUF header",)),
    "alignment 0": (
        lambda: raw_gguf([raw_kv("general.alignment", V.UINT32, struct.pack("<I", 0))]),
        ("general.alignment = 0, not a power of two",),
    ),
    "alignment 48": (
        lambda: raw_gguf([raw_kv("general.alignment", V.UINT32, struct.pack("<I", 48))]),
        ("general.alignment = 48",),
    ),
    "alignment as uint64": (
        lambda: raw_gguf([raw_kv("general.alignment", V.UINT64, struct.pack("<Q", 32))]),
        ("general.alignment has type 10, not uint32",),
    ),
    "tensor dimension count 2^31": (
        lambda: raw_gguf(tensors=[raw_string("t") + struct.pack("<I", 2**31)]),
        ("tensor t claims 2,147,483,648 dimensions",),
    ),
    "tensor dimension 2^63": (
        lambda: raw_gguf(tensors=[raw_tensor("t", [2**63])]),
        ("tensor t has an impossible shape",),
    ),
    "tensor of more than 2^63 elements": (
        lambda: raw_gguf(tensors=[raw_tensor("t", [2**40, 2**40])]),
        ("tensor t has an impossible shape",),
    ),
    "tensor of an unknown type": (
        lambda: raw_gguf(tensors=[raw_tensor("t", [4], 999)]),
        ("tensor t has type 999",),
    ),
    "tensor rows not a multiple of the block": (
        lambda: raw_gguf(tensors=[raw_tensor("t", [100, 2], T.Q4_K)]),
        ("tensor t has rows of 100 values", "block (256)"),
    ),
    "tensor data beyond the end of the file": (
        lambda: raw_gguf(tensors=[raw_tensor("t", [1024])], data=bytes(64)),
        ("tensor t's data", "beyond the end of the file", "truncated"),
    ),
    "tensor data offset 2^60": (
        lambda: raw_gguf(tensors=[raw_tensor("t", [4], offset=HUGE)]),
        ("tensor t's data", "beyond the end of the file"),
    ),
    "tensor data misaligned": (
        lambda: raw_gguf(tensors=[raw_tensor("t", [4], offset=4)]),
        ("tensor t starts at data offset 4, not a multiple of 32",),
    ),
    "a tensor twice": (
        lambda: raw_gguf(tensors=[raw_tensor("t", [4]), raw_tensor("t", [4], offset=32)]),
        ("tensor t appears twice",),
    ),
    "metadata entries over the cap": (
        lambda: raw_gguf(n_kv=gguf_header.MAX_KV + 1, data=bytes(16 * gguf_header.MAX_KV)),
        ("65,537 metadata entries, more than the 65,536 kvprobe reads",),
    ),
}


@pytest.mark.parametrize("case", sorted(STRUCTURE))
def test_damaged_structure_is_one_line(tmp_path: Path, case: str) -> None:
    make, words = STRUCTURE[case]
    refused_everywhere(_file(tmp_path, make()), *words, commands=("doctor",))


def test_truncated_anywhere_in_a_real_model(tmp_path: Path, tiny_model_path: Path) -> None:
    data = tiny_model_path.read_bytes()
    reader = gguf.GGUFReader(str(tiny_model_path))
    for cut in (3, 23, 200, reader.data_offset - 1, reader.data_offset + 1, len(data) - 1):
        model = _file(tmp_path, data[:cut], f"cut{cut}.gguf")
        with pytest.raises(UserError) as err:
            read_facts(model)
        assert "\n" not in str(err.value)
        assert any(w in str(err.value) for w in ("truncated", "not a GGUF file", "claims")), str(err.value)
    refused_everywhere(
        _file(tmp_path, data[: len(data) - 1], "cut.gguf"), "blk.1.ffn_down.weight", "truncated"
    )


def test_a_damaged_name_in_the_message_stays_on_one_line(tmp_path: Path) -> None:
    """Names in messages come from the file: a newline or an escape sequence is written out."""
    name = "evil\n\x1b]0;pwned\x07"
    model = _file(tmp_path, raw_gguf(tensors=[raw_tensor(name, [2**63])]))
    proc = kvprobe("doctor", str(model))
    assert_one_line_error(proc, "impossible shape", "evil\\n\\x1b]0;pwned\\x07")
    assert "\x1b" not in proc.stderr


def test_big_endian_files_read_as_little_endian_ones(tmp_path: Path) -> None:
    little = read_facts(write_gguf(tmp_path / "le.gguf", Spec(F.MOSTLY_Q8_0, T.Q8_0)))
    big = read_facts(write_gguf(tmp_path / "be.gguf", Spec(F.MOSTLY_Q8_0, T.Q8_0, big_endian=True)))
    assert (tmp_path / "be.gguf").read_bytes()[4:8] == struct.pack(">I", 3)
    assert {**big, "path": "", "name": ""} == {**little, "path": "", "name": ""}


def test_what_gguf_allows_and_llama_cpp_does_not_need_is_still_read(tmp_path: Path) -> None:
    """Arrays of arrays, every scalar type, a custom alignment and text that is not UTF-8 pass."""
    extras: dict[str, Any] = {
        "kvprobe.nested": (V.ARRAY, [[1, 2], [3]], V.ARRAY),
        "kvprobe.u64": 2**40,
        "kvprobe.f64": (V.FLOAT64, 0.5),
        "kvprobe.bools": [True, False],
        "kvprobe.strings": ["a", "b"],
        "general.basename": b"caf\xe9",  # Latin-1, not UTF-8
    }
    plain = read_facts(write_tiny_model(tmp_path / "plain.gguf"))
    facts = read_facts(write_tiny_model(tmp_path / "extra.gguf", metadata=extras, alignment=64))
    assert facts["basename"] == "caf\ufffd"
    assert {**facts, "path": "", "name": "", "basename": None} == {**plain, "path": "", "name": ""}


def test_the_walk_matches_gguf_on_the_tiny_model(tiny_model_path: Path) -> None:
    scan = gguf_header.scan_gguf(tiny_model_path)
    reader = gguf.GGUFReader(str(tiny_model_path))
    assert scan.data_start == reader.data_offset
    assert scan.n_tensors == len(reader.tensors)
    assert scan.n_kv == len(reader.fields) - 3  # gguf adds GGUF.version, .tensor_count, .kv_count


@pytest.mark.slow
def test_the_walk_is_fast_on_the_default_models_vocabulary(default_model_path: Path) -> None:
    """262,144 tokenizer strings: the walk is a small part of gguf's own parse (about 10 s)."""
    start = time.perf_counter()
    scan = gguf_header.scan_gguf(default_model_path)
    elapsed = time.perf_counter() - start
    assert scan.n_tensors > 200
    assert elapsed < 1.0, f"pre-scan took {elapsed:.2f} s"


# --- the imatrix file of `quantize --imatrix` ------------------------------------------------


def _imatrix_with(tmp_path: Path, model: Path, sums: np.ndarray, counts: np.ndarray) -> Path:
    w = gguf.GGUFWriter(str(tmp_path / "bad.imatrix.gguf"), "imatrix")
    w.add_array("imatrix.datasets", ["x"])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_tensor("blk.0.attn_q.weight.in_sum2", sums)
    w.add_tensor("blk.0.attn_q.weight.counts", counts)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tmp_path / "bad.imatrix.gguf"


def _cut_imatrix(tmp_path: Path, model: Path) -> Path:
    """A real imatrix cut one byte into its last tensor's data (its padding may go)."""
    whole = write_tiny_imatrix(tmp_path / "whole.gguf", model)
    end = max(t.data_offset + t.n_bytes for t in gguf.GGUFReader(str(whole)).tensors)
    cut = _file(tmp_path, whole.read_bytes()[: end - 1], "cut.imatrix.gguf")
    whole.unlink()
    return cut


IMATRIX: dict[str, tuple[Callable[[Path, Path], Path], tuple[str, ...]]] = {
    "the reproduction": (
        lambda d, m: _file(d, reproduction(), "a.imatrix.gguf"),
        (TOKENS, "claims", str(HUGE)),
    ),
    "truncated": (_cut_imatrix, ("--imatrix", "beyond the end of the file", "truncated")),
    "sums not a multiple of the counts": (
        lambda d, m: _imatrix_with(d, m, np.ones(7, np.float32), np.ones(2, np.float32)),
        ("--imatrix", "blk.0.attn_q.weight has 7 sums for 2 counts"),
    ),
    "no counts": (
        lambda d, m: _imatrix_with(d, m, np.ones(4, np.float32), np.ones(0, np.float32)),
        ("--imatrix", "4 sums for 0 counts"),
    ),
    "a sum that is NaN": (
        lambda d, m: _imatrix_with(d, m, np.array([1, np.nan], np.float32), np.ones(1, np.float32)),
        ("--imatrix", "not finite, non-negative"),
    ),
    "sums as F16": (
        lambda d, m: _imatrix_with(d, m, np.ones(4, np.float16), np.ones(1, np.float32)),
        ("--imatrix", "F16 sums", "not F32"),
    ),
}


@pytest.mark.parametrize("case", sorted(IMATRIX))
def test_a_damaged_imatrix_is_one_line(tmp_path: Path, tiny_model_path: Path, case: str) -> None:
    make, words = IMATRIX[case]
    imatrix = make(tmp_path, tiny_model_path)
    out = tmp_path / "out"
    out.mkdir()
    before = _snapshot(tmp_path)
    proc = kvprobe(
        "quantize", str(tiny_model_path), "--type", "Q4_0", "--imatrix", str(imatrix), "--out-dir", str(out)
    )
    assert_one_line_error(proc, *words)
    assert _snapshot(tmp_path) == before


# --- defect 2: implausible hyperparameters ----------------------------------------------------

# metadata replaced in the tiny model (2 layers, 2 heads, 1 KV head, 128 wide) -> words the one
# line must hold
ABSURD: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "4e9 layers": (
        {"llama.block_count": 4_000_000_000},
        ("llama.block_count = 4000000000", "1 to 512 layers"),
    ),
    "0 layers": ({"llama.block_count": 0}, ("llama.block_count = 0",)),
    "more layers than tensors": ({"llama.block_count": 3}, ("llama.block_count = 3", "only 2 layers")),
    "tensors beyond the layers": ({"llama.block_count": 1}, ("llama.block_count = 1", "layer 1 (blk.1.*)")),
    "no block count": ({"llama.block_count": None}, ("llama.block_count is missing",)),
    "zero heads": ({"llama.attention.head_count": 0}, ("llama.attention.head_count = 0", "need heads")),
    "zero KV heads": ({"llama.attention.head_count_kv": 0}, ("llama.attention.head_count_kv = 0",)),
    "KV heads not dividing the heads": (
        {"llama.attention.head_count_kv": 3},
        ("llama.attention.head_count_kv = 3", "2 query heads"),
    ),
    "negative head array": ({"llama.attention.head_count": [-1, -1]}, ("llama.attention.head_count = -1",)),
    "head array of the wrong length": (
        {"llama.attention.head_count": [2, 2, 2]},
        ("llama.attention.head_count has 3 entries", "block_count is 2"),
    ),
    "a 2^63 context": ({"llama.context_length": 2**63}, ("llama.context_length = 9223372036854775808",)),
    "a zero context": ({"llama.context_length": 0}, ("llama.context_length = 0",)),
    "zero width": ({"llama.embedding_length": 0}, ("llama.embedding_length = 0",)),
    "zero key length": ({"llama.attention.key_length": 0}, ("llama.attention.key_length = 0",)),
    "huge value length": (
        {"llama.attention.value_length": 2**40},
        ("llama.attention.value_length = 1099511627776",),
    ),
    "unknown file type": ({"general.file_type": 999}, ("general.file_type = 999", "pip install -U gguf")),
    "file type as text": (
        {"general.file_type": "Q4_K_M"},
        ("general.file_type is 'Q4_K_M', not a whole number",),
    ),
    "5000 experts": ({"llama.expert_count": 5000}, ("llama.expert_count = 5000", "1,024 experts")),
    "more used experts than experts": (
        {"llama.expert_count": 4, "llama.expert_used_count": 5},
        ("llama.expert_used_count = 5", "expert_count is 4"),
    ),
    "experts without used ones": ({"llama.expert_count": 4}, ("llama.expert_used_count = 0",)),
    "sliding window pattern of the wrong length": (
        {"llama.attention.sliding_window_pattern": [True]},
        ("llama.attention.sliding_window_pattern has 1 entry",),
    ),
    "architecture as a number": ({"general.architecture": 7}, ("general.architecture is '7'",)),
    "imatrix entry count as text": (
        {"quantize.imatrix.entries_count": "many"},
        ("quantize.imatrix.entries_count is 'many'",),
    ),
}
# What the issue names, through every command; the rest through the doctor.
EVERYWHERE = {"4e9 layers", "zero heads", "negative head array", "a 2^63 context", "unknown file type"}


@pytest.mark.parametrize("case", sorted(ABSURD))
def test_implausible_metadata_is_one_line_naming_the_key(tmp_path: Path, case: str) -> None:
    metadata, words = ABSURD[case]
    model = write_tiny_model(tmp_path / "m.gguf", metadata=metadata)
    commands = tuple(COMMANDS) if case in EVERYWHERE else ("doctor",)
    refused_everywhere(model, *words, commands=commands)


def test_the_bounds_refuse_nothing_a_real_layout_has(tmp_path: Path) -> None:
    """Hybrid models' recurrent layers have no KV heads; Mamba and RWKV no heads at all; the
    first file of a split model holds some layers' tensors; MTP layers may be left out."""
    hybrid = read_facts(
        write_tiny_model(tmp_path / "hybrid.gguf", metadata={"llama.attention.head_count_kv": [1, 0]})
    )
    assert hybrid["n_head_kv"] == [1, 0]
    split = Spec(F.MOSTLY_Q8_0, T.Q8_0, n_layer=4, tensor_layers=2, metadata={"split.count": 2})
    assert read_facts(write_gguf(tmp_path / "split-00001-of-00002.gguf", split))["n_layer"] == 4
    mtp = Spec(F.MOSTLY_Q8_0, T.Q8_0, n_layer=3, tensor_layers=2, metadata={"llama.nextn_predict_layers": 1})
    assert read_facts(write_gguf(tmp_path / "mtp.gguf", mtp))["n_layer"] == 3
    with pytest.raises(UserError, match="only 2 layers"):  # the same file without either key
        read_facts(write_gguf(tmp_path / "cut.gguf", Spec(F.MOSTLY_Q8_0, T.Q8_0, n_layer=3, tensor_layers=2)))
    facts = read_facts(_recurrent(tmp_path / "mamba.gguf"))
    assert (facts["n_layer"], facts["n_head_kv"], facts["head_dim_k"]) == (2, [0, 0], 0)


def _recurrent(path: Path) -> Path:
    """A header-only Mamba-like file: layers with an attn_norm but no attention, no heads."""
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_context_length(1 << 20)
    w.add_head_count(0)
    w.add_file_type(F.ALL_F32)
    for i in range(2):
        for name in ("attn_norm", "ssm_in", "ssm_out"):
            w.add_tensor(f"blk.{i}.{name}.weight", np.zeros(64, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- untrusted text on the terminal ----------------------------------------------------------

HOSTILE = "x\x1b[31m\x07\x9b[/]"


def test_metadata_text_reaches_the_terminal_without_control_characters(tmp_path: Path) -> None:
    metadata = {
        "general.basename": HOSTILE,
        "quantize.imatrix.file": HOSTILE,
        "quantize.imatrix.dataset": HOSTILE,
        "quantize.imatrix.entries_count": 14,
        SOURCE_TYPE_KEY: HOSTILE,
    }
    model = write_tiny_model(tmp_path / "m.gguf", metadata=metadata, arch="llama", name=HOSTILE)
    proc = kvprobe("doctor", str(model))
    assert proc.returncode == 0, proc.stderr
    for control in ("\x1b", "\x07", "\x9b"):
        assert control not in proc.stdout
    assert "x\\x1b[31m\\x07\\x9b[/]" in proc.stdout  # written out, markup literal
    report = json.loads(kvprobe("doctor", str(model), "--json").stdout)
    assert report["facts"]["basename"] == HOSTILE  # JSON escapes it: the data stays exact


def test_a_hostile_architecture_name_is_shown_written_out(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "m.gguf", arch="ll\x1bama", metadata={"ll\x1bama.block_count": 9})
    proc = kvprobe("doctor", str(model))
    assert_one_line_error(proc, "ll\\x1bama.block_count = 9")
    assert "\x1b" not in proc.stderr


def test_every_reader_is_the_bounded_one() -> None:
    """No module outside the walk builds a GGUFReader (the walk is what keeps them bounded)."""
    root = Path(__file__).resolve().parents[2] / "kvprobe"
    users = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if "GGUFReader(" in p.read_text(encoding="utf-8") and p.name != "gguf_header.py"
    ]
    assert users == []
