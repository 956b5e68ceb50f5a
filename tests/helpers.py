"""What the tests share, in one module (test files import only from here, never from each
other): the repository's example files, the `kvprobe` command run as a user runs it and its
one-line errors, GGUF files (header-only ones for `kvprobe doctor`, a tiny random-weight llama
model that llama.cpp really runs, an importance matrix for it, raw bytes no writer would
produce), a chat template, a run killed at a known unit, and mutations of result files.

Fixtures shared by several test files live in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import gguf
import numpy as np
import pytest
from hypothesis import strategies as st

from kvprobe.api.cache_types import parse_config_id
from kvprobe.infra.test_hooks import STOP_AFTER
from kvprobe.result.blocks import where

if TYPE_CHECKING:
    from kvprobe.engine.server.process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]

# --- the repository's example files ---------------------------------------------------------------


def examples(pattern: str, keep: Callable[[Path], bool] = lambda path: True) -> list[Path]:
    """The files a glob `pattern` (relative to the repository's root) matches and `keep` keeps,
    sorted. None is an error, raised while the tests are collected: a test parametrized over
    them would otherwise collect nothing and pass unnoticed (the files moved, or the glob is
    wrong)."""
    found = sorted(p for p in ROOT.glob(pattern) if keep(p))
    assert found, f"no file matches {pattern} under {ROOT}: the tests over them would check nothing"
    return found


# --- the command line, as a user runs it -----------------------------------------------------------

RUN_TIMEOUT_S = 600  # a `kvprobe` command still running after this has hung
HANG_S = 60  # a command that must answer at once (a refusal, a report, a doctor): more has hung


def default_signals() -> None:
    """In the child, before exec: SIGINT and SIGTERM as a terminal delivers them. A suite
    started in the background (`nohup ... &`) hands its children SIGINT ignored, and a child
    that ignores it cannot show what Ctrl-C does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def kvprobe(
    *args: str,
    stop: str | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = RUN_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """`python -m kvprobe ARGS` in a child process, its output captured as text.

    `env` adds to (or overrides) this process's environment. `stop` sets the test switch
    KVPROBE_TEST_STOP_AFTER ("DOC,STEP[,GROUP]:HOW", see kvprobe.infra.test_hooks): the run sends
    itself SIGKILL, SIGTERM, SIGSTOP or SIGINT right after journaling that unit; the child gets
    SIGINT and SIGTERM as a terminal delivers them (`default_signals`), so a signal it sends
    itself does what it would for a user. A command still running after `timeout` seconds is
    killed and fails the test (it hung) instead of hanging the suite."""
    switches = {STOP_AFTER: stop} if stop else {}
    try:
        return subprocess.run(
            [sys.executable, "-m", "kvprobe", *args],
            check=False,
            capture_output=True,
            text=True,
            cwd=cwd,
            env={**os.environ, **(env or {}), **switches},
            timeout=timeout,
            preexec_fn=default_signals,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"kvprobe {' '.join(args)[:200]} still ran after {timeout} s")


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """A refusal as kvprobe gives it: exit code 2, no traceback, one line on stderr that holds
    every one of `words`. Returns the line."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def snapshot(*places: Path) -> dict[str, str]:
    """Every file at or under `places` (links and FIFOs by what they are): what "nothing
    changed" means."""
    out = {}
    for place in places:
        for path in [place, *sorted(place.rglob("*"))] if place.is_dir() else [place]:
            if path.is_symlink():
                out[str(path)] = "link " + os.readlink(path)
            elif path.is_fifo():
                out[str(path)] = "fifo"
            elif path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# --- header-only GGUF files for `kvprobe doctor` ---------------------------------------------------
# The doctor reads metadata and tensor headers, never tensor data, so the data region is a sparse
# hole (os.truncate): a "14B" file costs no disk and no time.

T = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
BLOCK_WEIGHTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass
class Spec:
    file_type: gguf.LlamaFileType
    bulk: T
    token_embd: T | None = None  # default: bulk
    output: T | None = None  # default: bulk; use tied=True for no output tensor
    tied: bool = False
    overrides: dict[str, T] = field(default_factory=dict)  # block tensor suffix -> type
    n_layer: int = 2
    n_embd: int = 256
    n_ff: int = 512
    n_vocab: int = 1024
    n_expert: int = 0
    basename: str = "testmodel"
    metadata: dict[str, Any] = field(default_factory=dict)  # see set_metadata
    tensor_layers: int | None = None  # blocks whose tensors the file holds (default n_layer)
    big_endian: bool = False

    @property
    def block_weights(self) -> int:
        return self.n_layer * len(BLOCK_WEIGHTS)


class Dims(TypedDict):
    n_layer: int
    n_embd: int
    n_ff: int
    n_vocab: int


BIG: Dims = {"n_layer": 40, "n_embd": 5120, "n_ff": 14336, "n_vocab": 32000}  # 13.3B parameters


def imatrix_metadata(spec: Spec, file: str = "testmodel-wiki.imatrix.gguf") -> dict[str, Any]:
    return {
        "quantize.imatrix.file": file,
        "quantize.imatrix.dataset": "wiki.train.raw",
        "quantize.imatrix.entries_count": spec.block_weights,
        "quantize.imatrix.chunks_count": 125,
    }


def _value_type(value: Any) -> V:
    """The GGUF type a plain value is written as: ints as uint32, or the signed or 64-bit type
    that holds them."""
    if isinstance(value, bool):
        return V.BOOL
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return V.UINT32
        return V.UINT64 if value > 0 else (V.INT32 if value >= -(2**31) else V.INT64)
    if isinstance(value, float):
        return V.FLOAT32
    if isinstance(value, (str, bytes)):
        return V.STRING  # bytes: written as they are, UTF-8 or not
    if isinstance(value, list):
        return V.ARRAY
    raise TypeError(f"no GGUF type for {value!r}")


def set_metadata(w: gguf.GGUFWriter, items: Mapping[str, Any]) -> None:
    """Replace metadata entries, or with None remove them. A plain value gets `_value_type`'s
    type (a list: gguf's type for its first element); a tuple (GGUFValueType, value) or, for an
    array, (GGUFValueType.ARRAY, values, element type) gets exactly that type."""
    for key, value in items.items():
        for kv in w.kv_data:
            kv.pop(key, None)
        if value is None:
            continue
        if isinstance(value, tuple):
            w.add_key_value(key, value[1], value[0], value[2] if len(value) > 2 else None)
        else:
            w.add_key_value(key, value, _value_type(value))


def _nbytes(shape: tuple[int, ...], qtype: T) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def write_gguf(path: Path, spec: Spec) -> Path:
    order = gguf.GGUFEndian.BIG if spec.big_endian else gguf.GGUFEndian.LITTLE
    w = gguf.GGUFWriter(str(path), "llama", endianess=order)
    w.add_name(f"{spec.basename} test")
    w.add_basename(spec.basename)
    w.add_context_length(4096)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_embd // 128)
    w.add_head_count_kv(spec.n_embd // 128)
    w.add_file_type(spec.file_type)
    if spec.n_expert:
        w.add_expert_count(spec.n_expert)
        w.add_expert_used_count(2)
    set_metadata(w, spec.metadata)
    tensors: list[tuple[str, tuple[int, ...], T]] = [
        ("token_embd.weight", (spec.n_vocab, spec.n_embd), spec.token_embd or spec.bulk),
        ("output_norm.weight", (spec.n_embd,), T.F32),
    ]
    if not spec.tied:
        tensors.append(("output.weight", (spec.n_vocab, spec.n_embd), spec.output or spec.bulk))
    experts = (spec.n_expert,) if spec.n_expert else ()
    shapes = {
        "attn_q": (spec.n_embd, spec.n_embd),
        "attn_k": (spec.n_embd, spec.n_embd),
        "attn_v": (spec.n_embd, spec.n_embd),
        "attn_output": (spec.n_embd, spec.n_embd),
        "ffn_gate": (*experts, spec.n_ff, spec.n_embd),
        "ffn_up": (*experts, spec.n_ff, spec.n_embd),
        "ffn_down": (*experts, spec.n_embd, spec.n_ff),
    }
    for i in range(spec.n_layer if spec.tensor_layers is None else spec.tensor_layers):
        tensors.append((f"blk.{i}.attn_norm.weight", (spec.n_embd,), T.F32))
        for name in BLOCK_WEIGHTS:
            tensors.append((f"blk.{i}.{name}.weight", shapes[name], spec.overrides.get(name, spec.bulk)))
    for name, shape, qtype in tensors:
        w.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(shape, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    start = w.fout[0].tell()
    w.close()
    align = gguf.GGUF_DEFAULT_ALIGNMENT
    data_start = -(-start // align) * align
    total = data_start + sum(-(-_nbytes(s, q) // align) * align for _, s, q in tensors)
    os.truncate(path, total)  # a sparse hole where the weights would be
    return path


# --- raw headers, byte by byte: what no writer would produce -----------------------------------


def raw_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def raw_kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    """One metadata entry: its name, its value type and the value's bytes as given."""
    return raw_string(key) + struct.pack("<I", vtype) + payload


def raw_tensor(name: str | bytes, dims: list[int], qtype: int = T.F32, offset: int = 0) -> bytes:
    """One tensor's header entry."""
    return raw_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, qtype, offset)


def raw_gguf(
    kvs: Sequence[bytes] = (),
    tensors: Sequence[bytes] = (),
    *,
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    data: bytes = bytes(64),
) -> bytes:
    """A GGUF file from raw parts; the counts default to the parts given, and `data` follows the
    header (aligned to 32 bytes where there are tensors)."""
    head = b"GGUF" + struct.pack(
        "<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    head += b"".join(kvs) + b"".join(tensors)
    if tensors:
        head += bytes(-len(head) % gguf.GGUF_DEFAULT_ALIGNMENT)
    return head + data


# --- a tiny random-weight llama-architecture GGUF ---------------------------------------------------
# Real llama.cpp loads and runs it; outputs are meaningless but deterministic, which is what
# plumbing tests (chunking, forks, cache types) need.

N_EMBD = 128
N_HEAD = 2  # head dim 64: quantized caches (block 32) and Hadamard rotation (multiple of 64) apply
N_HEAD_KV = 1
N_FF = 256
N_LAYER = 2
N_CTX_TRAIN = 4096


def _vocab(extra: str = "\n", control: tuple[str, ...] = ()) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["\u2581"] + [chr(c) for c in range(33, 127)]
    pieces += ["\u2581" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["\u2581" + chr(c) for c in range(ord("A"), ord("Z") + 1)]
    pieces += ["\u2581the", "\u2581is", "\u2581of", "\u2581and", "\u2581number", extra]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # longer pieces score higher so SPM prefers them
    scores = [0.0] * 259 + [float(len(p)) - i * 1e-4 for i, p in enumerate(pieces)]
    tokens += list(control)  # a chat template's markers (<|im_start|>), parsed as special tokens
    types += [gguf.TokenType.CONTROL] * len(control)
    scores += [0.0] * len(control)
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(
    path: Path,
    seed: int = 0,
    last_piece: str = "\n",
    *,
    name: str = "kvprobe-tiny-test",
    arch: str = "llama",
    context_length: int | str = N_CTX_TRAIN,
    metadata: Mapping[str, Any] | None = None,
    alignment: int | None = None,
    chat_template: str | None = None,
    control_tokens: tuple[str, ...] = (),
    eos_token: str | None = None,
) -> Path:
    """`last_piece` changes one vocabulary entry: a model with another tokenizer. `name`,
    `arch` and a string `context_length` make hostile or broken files for the error tests;
    `metadata` replaces or removes entries (`set_metadata`), and `alignment` sets
    general.alignment with the data laid out for it. `chat_template` and `control_tokens` make
    an "instruct" model: its template and the markers it uses, as control tokens (`eos_token`,
    one of them, becomes EOS: the end of a turn)."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab(last_piece, control_tokens)
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD
    w = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_name(name)
    if isinstance(context_length, str):
        w.add_string(f"{arch}.context_length", context_length)
    else:
        w.add_context_length(context_length)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(tokens.index(eos_token) if eos_token else 2)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    set_metadata(w, metadata or {})

    def t(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w.add_tensor("token_embd.weight", t(n_vocab, N_EMBD, scale=0.5))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.add_tensor("output.weight", t(n_vocab, N_EMBD, scale=0.2))
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", t(N_EMBD, N_EMBD, scale=0.3))
        w.add_tensor(f"blk.{i}.attn_k.weight", t(N_HEAD_KV * head_dim, N_EMBD, scale=0.3))
        w.add_tensor(f"blk.{i}.attn_v.weight", t(N_HEAD_KV * head_dim, N_EMBD))
        w.add_tensor(f"blk.{i}.attn_output.weight", t(N_EMBD, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_down.weight", t(N_EMBD, N_FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_imatrix(path: Path, model_path: Path) -> Path:
    """An importance matrix for the model at `model_path`, as llama-imatrix writes one (GGUF):
    random sums of squared activations for every block weight."""
    reader = gguf.GGUFReader(str(model_path))
    w = gguf.GGUFWriter(str(path), "imatrix")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["tiny-calibration.txt"])
    w.add_uint32("imatrix.chunk_count", 3)
    w.add_uint32("imatrix.chunk_size", 64)
    rng = np.random.default_rng(0)
    for t in reader.tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            n_in = int(t.shape[0])  # ggml ne0: the input dimension
            w.add_tensor(f"{t.name}.in_sum2", rng.random(n_in).astype(np.float32) * 30)
            w.add_tensor(f"{t.name}.counts", np.array([30.0], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- chat form ------------------------------------------------------------------------------------

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


# --- runs stopped at a known unit -------------------------------------------------------------------

# Two documents x checkpoints 1024, 1536 = 4 units; every probe, the first document scored
# position by position (divergence) with the null check.
RESUME_SCENARIO = """
name = "resume"
probes = ["needle", "repetition", "divergence"]
[plan]
documents = 2
chunk = 256
[needle]
per_segment = 2
[repetition]
tokens = 16
offsets = 2
"""


def kill_after_two_units(tiny_model_path: Path, folder: Path) -> bytes:
    """The journal of a run killed after its first document's two units (run in `folder`)."""
    (folder / "resume.toml").write_text(RESUME_SCENARIO)
    out = folder / "r.json"
    proc = kvprobe(
        "run",
        "--model",
        str(tiny_model_path),
        "--scenario",
        str(folder / "resume.toml"),
        "--cache",
        "q8_0",
        "--ctx",
        "1536",
        "--threads",
        "2",
        "--null-check",
        "--no-html",
        "--out",
        str(out),
        stop="0,1:kill",
    )
    assert proc.returncode == -9, proc.stderr
    return Path(str(out) + ".journal.jsonl").read_bytes()


# --- a real llama-server ---------------------------------------------------------------------------

LLAMA_SERVER_ENV = "KVPROBE_LLAMA_SERVER"  # the binary the server engine's tests run (noxfile.SERVER_ENV)
NO_LLAMA_SERVER = (
    "no llama-server binary: run `nox -s llama_server` (builds one, ~9 min) or set KVPROBE_LLAMA_SERVER"
)


@functools.cache
def _nox_llama_server() -> Path | None:
    """Where `nox -s llama_server` keeps the binary it built (noxfile.server_cache), if nox is here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_kvprobe_noxfile", ROOT / "noxfile.py")
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError:  # nox not installed: no cached build to find
        return None
    return Path(module.server_cache()) / "llama-server"


def llama_server_binary() -> Path:
    """The real llama-server the server engine's tests run: $KVPROBE_LLAMA_SERVER, else the one
    `nox -s llama_server` built. None is a skip that says how to get one, except in CI (CI builds
    it: every server test skipped there would pass unnoticed), where it fails; a variable naming
    no executable file always fails (it was asked for)."""
    named = os.environ.get(LLAMA_SERVER_ENV)
    if named:
        if not (Path(named).is_file() and os.access(named, os.X_OK)):
            pytest.fail(f"{LLAMA_SERVER_ENV}={named} is not an executable file")
        return Path(named).resolve()
    cached = _nox_llama_server()
    if cached is not None and cached.is_file():
        return cached.resolve()
    if os.environ.get("CI"):
        pytest.fail(f"CI must build llama-server before the tests ({NO_LLAMA_SERVER})")
    pytest.skip(NO_LLAMA_SERVER)


def user_server(binary: Path, model: Path, log: Path, cache: str, *extra: str) -> ServerProcess:
    """A llama-server as a user starts one for kvprobe to attach to, not started yet (`with` starts
    it, waits until it answers /health, and stops it): one slot, 2048 tokens, `cache` for K and
    V, flash attention, full SWA, one thread; `extra` last (llama-server takes the last of a
    repeated argument)."""
    # imported here: the test files that start no server need not load the server engine
    from kvprobe.engine.server.process import ServerProcess

    args = ["-m", str(model), "-c", "2048", "-np", "1", "-ctk", cache, "-ctv", cache, "-fa", "on"]
    return ServerProcess(binary, [*args, "--swa-full", "-t", "1", *extra], log_path=log)


@contextlib.contextmanager
def attached_servers(
    binary: Path, model: Path, folder: Path, *extra: str
) -> Iterator[dict[str, ServerProcess]]:
    """The attach mode's two running servers, by cache type ("f16", the reference, and "q4_0"),
    logging to `folder`/attach-<cache>.log; both stopped when the block ends, however it ends."""
    with (
        user_server(binary, model, folder / "attach-f16.log", "f16", *extra) as f16,
        user_server(binary, model, folder / "attach-q4_0.log", "q4_0", *extra) as q4,
    ):
        yield {"f16": f16, "q4_0": q4}


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def llama_server_pids(binary: Path, *, parent: int | None = None, marker: str | None = None) -> list[int]:
    """The live processes running `binary` (as their argv[0]) whose parent is `parent` and whose
    arguments hold `marker` (a model file only one test uses: that test's servers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")]
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if argv[0] != str(binary) or (parent is not None and ppid != parent):
            continue
        if (marker is None or marker in argv) and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def wait_gone(pids: Sequence[int], seconds: float = 20.0) -> list[int]:
    """Polls until every one of `pids` has ended; returns those still running after `seconds`
    (a bound on a hang, not a timing: a stopped server is gone in milliseconds)."""
    deadline = time.monotonic() + seconds
    while True:
        left = [p for p in pids if process_alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def kill_left(pids: Sequence[int]) -> None:
    """SIGKILL to those of `pids` (started by the test) still running: a failed test leaves none."""
    for pid in pids:
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def nvml_gpus() -> int:
    """NVIDIA GPUs NVML sees here: 0 without nvidia-ml-py, its driver library, or a device (a
    test that needs one skips, saying which)."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError:
        return 0
    finally:
        pynvml.nvmlShutdown()


def assert_one_line_server_error(message: str, *parts: str) -> str:
    """A llama-server failure as kvprobe words it: one line, naming the server, then `;` and the
    fix; every one of `parts` in it."""
    assert "\n" not in message, message
    assert message.startswith("llama-server at "), message
    assert ";" in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def wait_frozen(proc: subprocess.Popen[str]) -> None:
    """Until a run has frozen itself at a unit (KVPROBE_TEST_STOP_AFTER=...:stop, SIGSTOP)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before its stop: {err[-2000:]}")
        if Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the run never reached its stop in {RUN_TIMEOUT_S} s")


# --- result documents and their mutations ---------------------------------------------------------


def config_row(cid: str) -> dict[str, str]:
    """A result's `configs` entry for a configuration id ("q4_0", "k=q8_0,v=f16")."""
    cache = parse_config_id(cid)
    return {"id": cid, "type_k": cache.type_k, "type_v": cache.type_v}


JsonPath = tuple[str | int, ...]  # a field of a JSON document: its keys and list indices


@dataclass(frozen=True)
class Mutation:
    path: JsonPath
    kind: str  # "delete", "type", "null", "nest", "deep", "nan", "inf", "huge"
    value: Any = None

    def __str__(self) -> str:
        return f"{self.kind} at {where(list(self.path)) or '$'}"


_DEEP = "[" * 200_000 + "]" * 200_000  # past json's recursion limit
MUTATION_LITERALS = {"nan": "NaN", "inf": "-Infinity", "huge": "1e999", "deep": _DEEP}  # not JSON values


def mutated_text(doc: dict[str, Any], m: Mutation) -> str:
    """The file with the mutation applied; literals JSON cannot hold go in as text."""
    new = copy.deepcopy(doc)
    parent: Any = new
    for step in m.path[:-1]:
        parent = parent[step]
    last = m.path[-1]
    if m.kind == "delete":
        del parent[last]
        return json.dumps(new)
    marker = "@@MUTATED@@"
    parent[last] = marker if m.kind in MUTATION_LITERALS else m.value
    return json.dumps(new).replace(json.dumps(marker), MUTATION_LITERALS.get(m.kind, ""))


def every_path(value: Any, path: JsonPath = ()) -> list[JsonPath]:
    out = [path] if path else []
    if isinstance(value, dict):
        for key, child in value.items():
            out += every_path(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out += every_path(child, (*path, i))
    return out


def _at(doc: Any, path: JsonPath) -> Any:
    for step in path:
        doc = doc[step]
    return doc


ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8), st.just([]), st.just({}), st.just([[[[[]]]]]),
)  # fmt: skip


KINDS = ("delete", "type", "null", "nest", "nan", "inf", "huge", "length")


@st.composite
def result_mutations(
    draw: st.DrawFn, doc: dict[str, Any], kinds: tuple[str, ...] = (*KINDS, "deep")
) -> Mutation:
    """One field of `doc`: deleted, of another type, null, nested up to 80 deep, NaN, infinity,
    beyond a double, a list emptied, cut or grown; or nested past json's recursion limit."""
    path = draw(st.sampled_from(every_path(doc)))
    value = _at(doc, path)
    kind = draw(st.sampled_from(kinds))
    if kind == "type":
        return Mutation(path, kind, draw(ODD_VALUES))
    if kind == "nest":
        for _ in range(draw(st.integers(1, 80))):
            value = [value]
        return Mutation(path, kind, value)
    if kind == "length" and isinstance(value, list):
        return Mutation(path, "type", draw(st.sampled_from([[], value[1:], value + value[:1]])))
    return Mutation(path, "null" if kind == "length" else kind)


# A scenario of one document with needles only: a few seconds per run on the tiny model (the
# server engine's and the sweep's server-axis tests).
NEEDLES = """
name = "needles"
probes = ["needle"]
[needle]
per_segment = 4
[plan]
documents = 1
chunk = 256
"""


# A real browser for the page tests: Debian's chromium. Skipped without one, except under CI
# (CI=true), where .ci/run installs it: there its absence fails the page tests (`browser()`)
# instead of passing them by skipping.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="no headless browser: install Debian's chromium package to run it",
)


def browser() -> str:
    """The browser's path (a test marked `needs_browser` fails here under CI without one)."""
    if CHROMIUM is None:
        pytest.fail("CI=true and no chromium: .ci/run installs Debian's chromium for the page tests")
    return CHROMIUM
