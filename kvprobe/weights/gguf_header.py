"""A bounded walk over a GGUF header, before `gguf.GGUFReader` parses it.

GGUFReader trusts every count it reads: an array that claims 2^60 entries makes it loop (and
allocate) forever, and a missing byte surfaces as an IndexError somewhere later. This walk
reads the same structure with `struct` over a read-only mmap, checks every count and length
against the bytes that remain (and against caps that keep GGUFReader's per-entry cost bounded)
before it iterates, and refuses in one line naming the file and the field. What it accepts,
GGUFReader parses without error; what it refuses, llama.cpp's gguf.cpp refuses too (or, for
the caps, no released model comes near).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import open_input

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # what gguf.GGUFReader reads; llama.cpp dropped version 1
HEADER_BYTES = 24  # magic, version, tensor count, metadata count
# GGUFReader keeps a few numpy views per metadata entry, per array element and per tensor (0.7
# GiB for Gemma 3's 262,144-token vocabulary): these caps bound its time and memory whatever
# the file's size. Released models hold about 50 entries, under 1,100 tensors, and arrays of
# under 1M elements in all (Gemma 3: 3 x 262,144).
MAX_KV = 65_536
MAX_TENSORS = 262_144
MAX_ARRAY_ELEMENTS = 8 * 2**20  # in all the file's arrays together
MAX_ARRAY_DEPTH = 8  # gguf-py reads arrays of arrays recursively; llama.cpp reads none
MAX_DIMS = 4  # GGML_MAX_DIMS
INT64_MAX = 2**63 - 1

T = gguf.GGUFValueType
SCALAR_BYTES = {
    T.UINT8: 1, T.INT8: 1, T.BOOL: 1, T.UINT16: 2, T.INT16: 2, T.UINT32: 4, T.INT32: 4,
    T.FLOAT32: 4, T.UINT64: 8, T.INT64: 8, T.FLOAT64: 8,
}  # fmt: skip
MIN_BYTES = {**SCALAR_BYTES, T.STRING: 8, T.ARRAY: 12}  # the least one value of a type takes
DAMAGED = "the GGUF file is damaged; download it again"
TRUNCATED = "the GGUF file is truncated; download it again"
# What GGUFReader raises on a file it cannot read: the walk leaves none of them possible, but a
# damaged file must never end in a traceback.
READ_ERRORS = (
    ValueError, IndexError, KeyError, TypeError, OverflowError, MemoryError, struct.error, OSError,
    EOFError, RecursionError,
)  # fmt: skip


@dataclass(frozen=True)
class HeaderScan:
    """What the walk found: enough to say where the data is."""

    version: int
    n_tensors: int
    n_kv: int
    alignment: int
    data_start: int  # where the tensor data begins (aligned)
    size: int


def printable(text: str, limit: int = 100) -> str:
    """Metadata text for a one-line message: control characters (a newline too) written out."""
    short = text if len(text) <= limit else text[:limit] + "..."
    return short if short.isprintable() else repr(short)[1:-1]


def read_gguf(path: Path, label: str = "model file") -> gguf.GGUFReader:
    """A GGUFReader over `path` once the bounded walk has passed it; a one-line UserError
    ("{label} {path}: ...") otherwise."""
    scan_gguf(path, label)
    try:
        return gguf.GGUFReader(path, "r")
    except READ_ERRORS as exc:
        problem = printable(f"{type(exc).__name__}: {exc}")
        raise UserError(f"{label} {path} is a damaged GGUF file ({problem}): download it again") from None


def field_value(reader: gguf.GGUFReader, key: str) -> Any:
    """The value of metadata `key` (None if absent); text is decoded leniently (U+FFFD for bytes
    that are not UTF-8), where `ReaderField.contents` would raise."""
    field = reader.get_field(key)
    if field is None:
        return None
    if field.types and field.types[-1] == T.STRING:
        texts = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        return texts if field.types[0] == T.ARRAY else texts[0]
    return field.contents()


def scan_gguf(path: Path, label: str = "model file") -> HeaderScan:
    """Walk the header of `path`; a one-line UserError ("{label} {path}: ...") for anything a
    reader could not read within the file's bytes."""
    where = f"{label} {path}"
    try:
        # The bounded reader: a FIFO, a device or a file of /proc is refused, never waited on.
        with open_input(path, label, "give a GGUF file") as (fh, st):
            size = st.st_size
            if size < HEADER_BYTES:
                raise UserError(f"{where} has only {size} bytes, too few for a GGUF header: {TRUNCATED}")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _Walk(buf, len(buf), where).header()  # the size mapped, should it have changed
    except (OSError, ValueError) as exc:  # ValueError: mmap of a file emptied meanwhile
        reason = getattr(exc, "strerror", None) or exc
        raise UserError(f"{where} cannot be read ({reason}): check the path and permissions") from None


class _Walk:
    """A cursor over the header; every read is checked against the bytes left."""

    def __init__(self, buf: mmap.mmap, size: int, where: str) -> None:
        self.buf, self.size, self.where = buf, size, where
        self.pos = 0
        self.order = "<"
        self.elements = 0  # array elements so far, against MAX_ARRAY_ELEMENTS
        self.alignment = gguf.GGUF_DEFAULT_ALIGNMENT

    # --- primitives --------------------------------------------------------------------------

    def fail(self, what: str, fix: str = DAMAGED) -> UserError:
        return UserError(f"{self.where}: {what}: {fix}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"the file ends inside {what}, at byte {self.pos:,} of {self.size:,}", TRUNCATED)

    def number(self, fmt: str, what: str) -> int:
        width = struct.calcsize(fmt)
        self.need(width, what)
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += width
        return int(value)

    def text(self, what: str) -> str:
        length = self.number("Q", what)
        if length > self.size - self.pos:
            raise self.fail(f"{what} claims {length} bytes but the file has only {self.size} bytes")
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8 text ({printable(repr(raw))})") from None

    def claim(self, count: int, each: int, what: str) -> None:
        """`count` items of at least `each` bytes must fit in what is left of the file."""
        if count * each > self.size - self.pos:
            raise self.fail(f"{what} claims {count} entries but the file has only {self.size} bytes")

    # --- the header --------------------------------------------------------------------------

    def header(self) -> HeaderScan:
        magic = bytes(self.buf[:4])
        if magic != MAGIC:
            raise self.fail(f"not a GGUF file (starts with {magic!r})", "convert it to GGUF first")
        self.pos = len(MAGIC)
        version = self.version()
        n_tensors = self.number("Q", "the tensor count")
        n_kv = self.number("Q", "the metadata count")
        self.claim(n_kv, 8 + 4 + 1, "the header's metadata count")
        self.claim(n_tensors, 8 + 4 + 4 + 8, "the header's tensor count")
        self.cap(n_kv, MAX_KV, "metadata entries")
        self.cap(n_tensors, MAX_TENSORS, "tensors")
        self.metadata(n_kv)
        tensors = [self.tensor_info(i) for i in range(n_tensors)]
        self.names_unique([name for name, _, _ in tensors])
        data_start = -(-self.pos // self.alignment) * self.alignment
        if tensors and data_start > self.size:
            raise self.fail(f"the file ends before its tensor data (byte {data_start:,})", TRUNCATED)
        for name, offset, nbytes in tensors:
            self.tensor_data(name, offset, nbytes, data_start)
        return HeaderScan(version, n_tensors, n_kv, self.alignment, data_start, self.size)

    def version(self) -> int:
        version = self.number("I", "the GGUF version")
        if version & 0xFFFF == 0:  # written for the other byte order (gguf-py reads it swapped)
            self.order = ">"
            version = int.from_bytes(version.to_bytes(4, "little"), "big")
        if version == 1:
            raise self.fail("GGUF version 1, which llama.cpp no longer reads", "convert the model again")
        if version not in VERSIONS:
            raise self.fail(
                f"GGUF version {version}, not one this gguf package reads ({', '.join(map(str, VERSIONS))})",
                "the file is damaged, or newer than kvprobe's gguf package (pip install -U gguf)",
            )
        return version

    def cap(self, count: int, limit: int, what: str) -> None:
        if count > limit:
            raise self.fail(f"the header claims {count:,} {what}, more than the {limit:,} kvprobe reads")

    # --- metadata ----------------------------------------------------------------------------

    def metadata(self, n_kv: int) -> None:
        seen: set[str] = set()
        for i in range(n_kv):
            key = self.text(f"the name of metadata entry {i}")
            shown = printable(key)
            if not key:
                raise self.fail(f"metadata entry {i} has an empty name")
            if key in seen:
                raise self.fail(f"metadata {shown} appears twice")
            seen.add(key)
            vtype = self.number("I", f"the type of metadata {shown}")
            if key == gguf.Keys.General.ALIGNMENT:
                self.read_alignment(vtype)
            else:
                self.value(vtype, f"metadata {shown}", 0)

    def read_alignment(self, vtype: int) -> None:
        if vtype != T.UINT32:
            raise self.fail(f"metadata {gguf.Keys.General.ALIGNMENT} has type {vtype}, not uint32 (4)")
        value = self.number("I", f"metadata {gguf.Keys.General.ALIGNMENT}")
        if value == 0 or value & (value - 1):
            raise self.fail(f"metadata {gguf.Keys.General.ALIGNMENT} = {value}, not a power of two")
        self.alignment = value

    def value(self, vtype: int, what: str, depth: int) -> None:
        if vtype in SCALAR_BYTES:
            self.need(SCALAR_BYTES[T(vtype)], what)
            self.pos += SCALAR_BYTES[T(vtype)]
        elif vtype == T.STRING:
            self.skip_strings(1, what)
        elif vtype == T.ARRAY:
            self.array(what, depth + 1)
        else:
            raise self.fail(f"{what} has value type {vtype}, which GGUF does not define")

    def array(self, what: str, depth: int) -> None:
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(
                f"{what} nests arrays {depth} deep, more than the {MAX_ARRAY_DEPTH} kvprobe reads"
            )
        itype = self.number("I", f"the element type of {what}")
        count = self.number("Q", f"the length of {what}")
        if itype not in MIN_BYTES:
            raise self.fail(f"{what} is an array of value type {itype}, which GGUF does not define")
        self.claim(count, MIN_BYTES[T(itype)], what)
        self.elements += count
        if self.elements > MAX_ARRAY_ELEMENTS:
            raise self.fail(
                f"{what} brings the metadata arrays to {self.elements:,} entries, more than the "
                f"{MAX_ARRAY_ELEMENTS:,} kvprobe reads"
            )
        if itype in SCALAR_BYTES:
            self.pos += count * SCALAR_BYTES[T(itype)]  # claim() checked that they fit
        elif itype == T.STRING:
            self.skip_strings(count, what)
        else:
            for _ in range(count):
                self.array(what, depth + 1)

    def skip_strings(self, count: int, what: str) -> None:
        """Step over `count` length-prefixed strings: the hot loop (262,144 for Gemma 3's vocab)."""
        buf, end, pos = self.buf, self.size, self.pos
        unpack = struct.Struct(self.order + "Q").unpack_from
        for i in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.need(8, f"{what} (entry {i})")
            length = unpack(buf, pos)[0]
            pos += 8 + length
            if pos > end:
                self.string_too_long(f"{what} entry {i}" if count > 1 else what, length)
        self.pos = pos

    def string_too_long(self, what: str, length: int) -> None:
        """Longer than the whole file: a damaged length; else the file was cut short."""
        if length > self.size:
            raise self.fail(f"{what} claims {length} bytes but the file has only {self.size} bytes")
        raise self.fail(f"{what} runs past the end of the file ({self.size:,} bytes)", TRUNCATED)

    # --- tensors -----------------------------------------------------------------------------

    def tensor_info(self, i: int) -> tuple[str, int, int]:
        """(name, offset, bytes) of tensor i, its shape and type checked as llama.cpp checks them."""
        name = self.text(f"the name of tensor {i}")
        shown = printable(name)
        n_dims = self.number("I", f"the dimension count of tensor {shown}")
        if n_dims > MAX_DIMS:
            raise self.fail(
                f"tensor {shown} claims {n_dims:,} dimensions; GGUF tensors have at most {MAX_DIMS}"
            )
        dims = [self.number("Q", f"the shape of tensor {shown}") for _ in range(n_dims)]
        if any(d > INT64_MAX for d in dims) or math.prod(dims) > INT64_MAX:
            raise self.fail(f"tensor {shown} has an impossible shape {dims}")
        raw_type = self.number("I", f"the type of tensor {shown}")
        try:
            block, type_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(raw_type)]
        except (ValueError, KeyError):
            raise self.fail(
                f"tensor {shown} has type {raw_type}, not a ggml type this gguf package knows",
                "the file is damaged, or newer than kvprobe's gguf package (pip install -U gguf)",
            ) from None
        row = dims[0] if dims else 1
        if row % block:
            raise self.fail(
                f"tensor {shown} has rows of {row} values, not a multiple of its type's block ({block})"
            )
        offset = self.number("Q", f"the data offset of tensor {shown}")
        return name, offset, math.prod(dims) // block * type_bytes

    def names_unique(self, names: list[str]) -> None:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise self.fail(f"tensor {printable(name)} appears twice")
            seen.add(name)

    def tensor_data(self, name: str, offset: int, nbytes: int, data_start: int) -> None:
        shown = printable(name)
        if offset % self.alignment:
            raise self.fail(
                f"tensor {shown} starts at data offset {offset:,}, not a multiple of {self.alignment}"
            )
        end = data_start + offset + nbytes
        if end > self.size:
            raise self.fail(
                f"tensor {shown}'s data (bytes {data_start + offset:,} to {end:,}) lies beyond the end of "
                f"the file ({self.size:,} bytes)",
                TRUNCATED,
            )
