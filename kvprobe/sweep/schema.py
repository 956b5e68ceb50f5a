"""The sweep manifest's schema, stated once (JSON Schema draft 2020-12, built from the result
schema's blocks): `sweep.json` is checked against it when it is read, so every later reader
(the report, --resume's pre-flight, the progress lines, the pace) can trust its types. A
manifest that breaks it is one line naming the JSON path of the first bad value.

    python -m kvprobe.sweep.schema      # the schema itself, as JSON

What types cannot say (the cells are the cross product of the spec's axes, each with its own
`kvprobe run` words and result file) is checked after it, by kvprobe.sweep.manifest."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

from kvprobe.api.cache_types import GGML_TYPE_IDS
from kvprobe.plan.chat import PROMPT_FORMATS
from kvprobe.result.blocks import (
    Schema,
    checker,
    describe,
    first_error,
    flag,
    integer,
    listing,
    mapping,
    nullable,
    number,
    of,
    record,
    text,
    where,
)
from kvprobe.run.options import MAX_CTX, MIN_CTX
from kvprobe.run.validate import MAX_GPU_LAYERS, MAX_MARGIN, MAX_SEED, MAX_THREADS
from kvprobe.sweep.cells import MAX_CELLS
from kvprobe.sweep.spec import IN_PROCESS, MAX_AXIS

KIND = "kvprobe-sweep"
VERSION = 1
STATUSES = ("pending", "running", "done", "failed", "interrupted")
MAX_WORDS = 1_000  # a cell's `kvprobe run` words: a few dozen
PATH = text(minLength=1, maxLength=4096)
# A model: an absolute path or the embedded default; a scenario: an absolute path or a bundled
# name. Relative paths would mean whatever the folder a sweep is resumed from makes of them.
MODEL_PATH = text("an absolute path, or `default`", pattern=r"^(default|/.*)$", maxLength=4096)
SCENARIO = text("an absolute path, or a bundled scenario's name", pattern=r"^(/.*|[A-Za-z0-9_-]+)$")
SERVER_PATH = text(f"an absolute path, or `{IN_PROCESS}`", pattern=f"^({IN_PROCESS}|/.*)$", maxLength=4096)
CACHE = text(enum=sorted(GGML_TYPE_IDS))
NAME = text(minLength=1, maxLength=100)


def axis(items: Schema) -> Schema:
    return listing(items, minItems=1, maxItems=MAX_AXIS)


MODEL = record(
    {"path": MODEL_PATH, "test": nullable(MODEL_PATH), "name": text(maxLength=100)},
    ["path", "test", "name"],
    additionalProperties=False,
)
SERVER = record({"path": SERVER_PATH, "name": NAME}, ["path", "name"], additionalProperties=False)
RUN_FIELDS: dict[str, Schema] = {
    "threads": nullable(integer(lo=1, hi=MAX_THREADS)),
    "seed": integer(lo=0, hi=MAX_SEED),
    "gpu_layers": nullable(integer(lo=-1, hi=MAX_GPU_LAYERS)),
    "until_decided": nullable(flag()),
    "baseline": text(minLength=1, maxLength=20),
    "max_contexts": nullable(integer(lo=1, hi=1024)),
    "margins": mapping(number(minimum=0, maximum=MAX_MARGIN)),
    "no_repack": flag(),
    "no_flash_attn": flag(),
    "no_rotation": flag(),
    "html": flag(),
    "server_args": listing(text(minLength=1, maxLength=4096), maxItems=256),
}
# server_args and the servers axis came later: a manifest written before them has neither.
LATER = ("server_args", "servers", "server")
RUN = record(RUN_FIELDS, [k for k in RUN_FIELDS if k not in LATER], additionalProperties=False)
EXCLUDE = record(
    {
        "model": text(),
        "caches": listing(CACHE, minItems=1),
        "split_kv": flag(),
        "ctx": integer(),
        "scenario": text(),
        "format": text(),
        "server": text(),
    },
    minProperties=1,
    additionalProperties=False,
)
SPEC = record(
    {
        "name": NAME,
        "models": axis(MODEL),
        "caches": axis(listing(CACHE, minItems=1, maxItems=len(GGML_TYPE_IDS))),
        "split_kv": axis(flag()),
        "contexts": axis(integer(lo=MIN_CTX, hi=MAX_CTX)),
        "scenarios": axis(SCENARIO),
        "formats": axis(text(enum=list(PROMPT_FORMATS))),
        "servers": axis(SERVER),
        "exclude": listing(EXCLUDE, maxItems=MAX_CELLS),
        "run": RUN,
        "source": text(maxLength=8192),
    },
    ["name", "models", "caches", "split_kv", "contexts", "scenarios", "formats", "exclude", "run", "source"],
    additionalProperties=False,
)
AXES = record(
    {
        "model": text(),
        "caches": listing(CACHE, minItems=1),
        "split_kv": flag(),
        "ctx": integer(lo=MIN_CTX, hi=MAX_CTX),
        "scenario": SCENARIO,
        "format": text(enum=list(PROMPT_FORMATS)),
        "server": NAME,  # only a cell that starts a llama-server has it
    },
    ["model", "caches", "split_kv", "ctx", "scenario", "format"],
    additionalProperties=False,
)
CELL_FIELDS: dict[str, Schema] = {
    "argv": listing(text(maxLength=8192), minItems=2, maxItems=MAX_WORDS),
    "out": PATH,
    "axes": AXES,
    "status": text(enum=list(STATUSES)),
    "error": nullable(text()),
    "seconds": nullable(number(minimum=0)),
    "host": nullable(text()),
    "attempts": integer(),
    "estimate_s": nullable(number(minimum=0)),
    "memory_bytes": nullable(integer(hi=2**63 - 1)),
    "summary": text(),
}
CELL = record(CELL_FIELDS, list(CELL_FIELDS), additionalProperties=False)
MANIFEST: Schema = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": f"kvprobe sweep manifest (sweep.json), schema version {VERSION}",
    **record(
        {
            "kind": of("string", const=KIND),
            "schema_version": of("integer", const=VERSION),
            "kvprobe_version": text(),
            "created": text(),
            "updated": text(),
            "command": text(),
            "executor": text(enum=["local", "ray"]),
            "spec": SPEC,
            "cells": of("object", additionalProperties=CELL, minProperties=1, maxProperties=MAX_CELLS),
        },
        ["kind", "schema_version", "created", "executor", "spec", "cells"],
        additionalProperties=False,
    ),
}


@functools.cache
def _validator() -> Any:
    return checker(MANIFEST)


def manifest_problem(data: Any) -> str | None:
    """The first value of a parsed sweep.json the schema refuses, in words naming its JSON
    path ("cells.tiny_q8_0_512.seconds must be a number or null, not a string"); None if valid."""
    error = first_error(_validator(), data)
    if error is None:
        return None
    at = where(list(error.absolute_path)) or "the manifest"
    keyword, limit = error.validator, error.validator_value
    if keyword == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{at} has a key kvprobe does not write: {json.dumps(extra[0])[:60]}"
    if keyword == "pattern":
        return f"{at} must be {error.schema['description']}, not {json.dumps(error.instance)[:60]}"
    if keyword in ("maxLength", "minProperties", "maxProperties"):
        what = "characters" if keyword == "maxLength" else "entries"
        return f"{at} must have {'at least' if keyword.startswith('min') else 'at most'} {limit:,} {what}"
    return describe(error)


if __name__ == "__main__":
    print(json.dumps(MANIFEST, indent=1))
    sys.exit(0)
