"""A sweep's cells: the cross product of its axes, less the cells left out. Each cell is an
ordinary `kvprobe run` with its own result file; its reference runs beside its test
configurations, in the same process, so every pairing stays valid."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvprobe.infra.errors import UserError
from kvprobe.plan.scenario import bundled_scenarios
from kvprobe.sweep.spec import DEFAULT_MODEL, IN_PROCESS, ModelChoice, ServerChoice, SweepSpec

MAX_CELLS = 10_000  # more is a typo in an axis, not a sweep anyone will wait for
CELLS_DIR = "cells"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


@dataclass(frozen=True)
class Cell:
    """One `kvprobe run`: a model (or REF/TEST pair), a cache set, --split-kv, a context, a
    scenario, a prompt format and where it runs (a llama-server binary, or in-process)."""

    id: str
    model: ModelChoice
    caches: tuple[str, ...]
    split_kv: bool
    ctx: int
    scenario: str
    format: str
    server: ServerChoice = field(default_factory=ServerChoice)

    @property
    def scenario_name(self) -> str:
        return self.scenario if self.scenario in bundled_scenarios() else Path(self.scenario).stem

    def axes(self) -> dict[str, Any]:
        """The cell's value on each axis, by the words [[exclude]] uses; `server` only where it
        starts one (an in-process cell's axes are those of manifests from before that axis)."""
        return {
            "model": self.model.label,
            "caches": list(self.caches),
            "split_kv": self.split_kv,
            "ctx": self.ctx,
            "scenario": self.scenario,
            "format": self.format,
        } | ({"server": self.server.name} if self.server.spawned else {})

    @property
    def out_name(self) -> str:
        """The cell's result file, relative to the sweep folder: the manifest holds only this,
        so a copied or moved folder writes into itself, never into the folder it came from."""
        return f"{CELLS_DIR}/{self.id}.json"

    def out(self, sweep_dir: Path) -> Path:
        return sweep_dir / self.out_name

    def argv(self, spec: SweepSpec, _sweep_dir: object = None) -> list[str]:
        """The cell as `kvprobe run` words (the sweep's run options included), its `--out`
        relative to the sweep folder (cell_run.cell_words resolves it where the folder is)."""
        words: list[str] = []
        for path in self.model.paths:
            if path != DEFAULT_MODEL:
                words += ["--model", path]
        for cache in self.caches:
            words += ["--cache", cache]
        if self.split_kv:
            words.append("--split-kv")
        words += ["--ctx", str(self.ctx), "--scenario", self.scenario]
        if self.format != "auto":
            words += ["--prompt-format", self.format]
        if self.server.spawned:  # `=`: a server's own words start with "-" (-ngl)
            words += [
                "--llama-server",
                self.server.path,
                *(f"--server-arg={a}" for a in spec.run.server_args),
            ]
        words += spec.run.argv()
        return [*words, "--out", self.out_name]


def _matches(entry: dict[str, Any], cell: Cell) -> bool:
    axes = cell.axes()
    for key, value in entry.items():
        if key == "model":
            if value not in (cell.model.label, *cell.model.paths):
                return False
        elif key == "server":
            if value not in (cell.server.name, cell.server.path):
                return False
        elif key == "caches":
            if sorted(value) != sorted(axes["caches"]):
                return False
        elif axes[key] != value:
            return False
    return True


def cell_id(model: ModelChoice, caches: tuple[str, ...], split_kv: bool, ctx: int, extra: list[str]) -> str:
    parts = [model.label, "+".join(caches) + ("-splitkv" if split_kv else ""), str(ctx), *extra]
    return _UNSAFE.sub("-", "_".join(parts))[:200]


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell, in a stable order (models slowest, then servers, contexts fastest); duplicates
    and exclude entries that match nothing are refused in one line."""
    if spec.run.server_args and not any(s.spawned for s in spec.servers):
        raise UserError(
            f"sweep {spec.source}: server_args (--server-arg) are for the cells that start a llama-server, "
            "and none does: add servers (--llama-server PATH), or drop them"
        )
    axes = (
        spec.models,
        spec.servers,
        spec.caches,
        spec.split_kv,
        spec.scenarios,
        spec.formats,
        spec.contexts,
    )
    total = 1
    for axis in axes:
        total *= len(axis)
    if total > MAX_CELLS:  # before building them: six axes of 256 would never end
        raise UserError(f"sweep {spec.source}: {total:,} cells, more than {MAX_CELLS:,}: split the sweep")
    several_scenarios, several_formats = len(spec.scenarios) > 1, len(spec.formats) > 1
    servers_named = any(s.spawned for s in spec.servers)  # a sweep of in-process cells keeps its names
    cells: list[Cell] = []
    seen: dict[tuple[Any, ...], Cell] = {}
    for model, server, caches, split, scenario, fmt, ctx in itertools.product(*axes):
        extra = [server.name] if servers_named else []
        extra += ([Path(scenario).stem] if several_scenarios else []) + ([fmt] if several_formats else [])
        cid = cell_id(model, caches, split, ctx, extra)
        cell = Cell(cid, model, caches, split, ctx, scenario, fmt, server)
        key = (
            tuple(os.path.realpath(p) for p in model.paths),
            os.path.realpath(server.path) if server.spawned else IN_PROCESS,
            tuple(sorted(caches)),
            split,
            ctx,
            scenario,
            fmt,
        )
        if key in seen:
            raise UserError(
                f"sweep {spec.source}: cell {cell.id} appears twice (an axis lists the same value twice, or "
                "two entries name the same file): remove the duplicate"
            )
        seen[key] = cell
        cells.append(cell)
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise UserError(
            f"sweep {spec.source}: two cells would share the name {twice}: give the models (or servers) names"
        )
    kept = [c for c in cells if not any(_matches(e, c) for e in spec.exclude)]
    for i, entry in enumerate(spec.exclude):
        if not any(_matches(entry, c) for c in cells):
            raise UserError(
                f"sweep {spec.source}: exclude[{i}] ({entry}) matches no cell: check its values against "
                "the axes"
            )
    if not kept:
        raise UserError(f"sweep {spec.source}: every cell is excluded: nothing to run")
    return kept
