"""Before a sweep starts: every cell checked as `kvprobe run` checks its options (a cell that
could never run is refused now, not hours later), each llama-server binary asked its `--version`
once (one that is not llama-server is refused now, not in every cell), and, where asked, what
each cell needs: the memory from the models' headers (the run's own pre-flight estimate) and a
time.

The time is rough until cells finish: depth-weighted tokens (kvprobe.run.pace) times a cost per
token that grows with the weights' size and the cache types, on this host's cores. Finished
cells replace the guess with their measured seconds (`Calibration`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kvprobe.api.cache_types import CacheConfig, check_flash_attn
from kvprobe.api.engine import EngineOptions
from kvprobe.engine import get_engine
from kvprobe.infra.errors import UserError
from kvprobe.run.engine_choice import SERVER_ENGINE, engine_choice
from kvprobe.run.options import run_parser
from kvprobe.run.pace import StepShape
from kvprobe.run.validate import (
    check_numbers,
    check_probes,
    check_until_decided,
    memory_need,
    parse_configs,
    parse_margins,
    run_models,
    run_scenario,
)
from kvprobe.sweep.cells import Cell
from kvprobe.sweep.spec import SweepSpec
from kvprobe.weights.doctor import read_facts

# Seconds per depth-weighted token per byte of weights, on 2 threads with an f16 cache
# (measured on the default model and the instruct model on 2 cores: `kvprobe sweep --dry-run`
# against finished cells, see the README's sweep section).
SECONDS_PER_TOKEN_BYTE = 1.2e-11
CELL_OVERHEAD_S = 15.0  # start-up, reading the headers, the kernel check, the page
# A quantized cache costs more per token on CPU (design.md: 390, 200 and 155 tokens/s at 2K
# depth with f16, q8_0 and q4_0 on the default model).
CACHE_COST = {"f16": 1.0, "bf16": 1.0, "q8_0": 1.95}
OTHER_QUANT_COST = 2.5
GPU_SPEEDUP = 50.0  # a guess until a GPU cell has finished: then measured


@dataclass(frozen=True)
class CellCheck:
    """A cell as `kvprobe run` would take it: its configurations and what they need."""

    cell: Cell
    argv: list[str]
    configs: list[tuple[str, str]]  # (K, V) types, the reference first
    model_paths: list[Path]
    documents: int
    chunk: int
    threads: int
    on_gpu: bool
    scenario: Any = field(repr=False)
    baseline: str | None = None
    null_check: bool = False
    server_version: str | None = None  # the cell's llama-server's `--version` (None: in-process)

    @property
    def rough_seconds(self) -> float:
        """The time guessed from the shape of the run alone (see the module's note)."""
        work = self.documents * StepShape(0, self.cell.ctx).work
        size = sum(_size(p) for p in self.model_paths) / len(self.model_paths)
        cost = sum((_cache_cost(k) + _cache_cost(v)) / 2 for k, v in self.configs) * len(self.model_paths)
        seconds = work * cost * size * SECONDS_PER_TOKEN_BYTE * 2 / max(1, self.threads)
        return CELL_OVERHEAD_S + (seconds / GPU_SPEEDUP if self.on_gpu else seconds)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _cache_cost(t: str) -> float:
    return CACHE_COST.get(t, OTHER_QUANT_COST)


def check_cell(cell: Cell, spec: SweepSpec, sweep_dir: Path) -> CellCheck:
    """The cell's `kvprobe run` words through run's own parser and checks (none reads a model);
    a one-line UserError naming the cell otherwise."""
    argv = cell.argv(spec, sweep_dir)
    try:
        args = run_parser().parse_args(["run", *argv])
        parse_margins(args.margin)
        check_numbers(args)
        configs, baseline = parse_configs(args)
        scenario = run_scenario(args)
        check_flash_attn(configs, not args.no_flash_attn)
        model_paths = run_models(args, configs, baseline)
        check_probes(scenario, mode=args.mode, ctx=args.ctx, baseline=baseline, null_check=args.null_check)
        check_until_decided(args, scenario, configs, baseline)
        if cell.server.spawned and cell.model.test:  # kvprobe run refuses it once it has read the headers
            raise UserError(
                "weights vs KV (two --model files) runs on the in-process engine: leave this pair's "
                "server cells out ([[exclude]] with its model and server)"
            )
        engine_choice(args, cell.out(sweep_dir))  # the binary, and --server-arg words kvprobe must set
    except UserError as exc:
        raise UserError(f"sweep cell {cell.id}: {exc}") from None
    gpu = args.gpu_layers is not None and args.gpu_layers != 0
    return CellCheck(
        cell,
        argv,
        [(c.type_k, c.type_v) for c in configs],
        model_paths,
        scenario.plan.documents,
        scenario.plan.chunk,
        args.threads or os.cpu_count() or 1,
        gpu,
        scenario,
        baseline,
        args.null_check,
    )


def check_cells(cells: Sequence[Cell], spec: SweepSpec, sweep_dir: Path) -> list[CellCheck]:
    checks = [check_cell(c, spec, sweep_dir) for c in cells]
    versions = {
        s.path: server_version(s.path, s.name) for s in dict.fromkeys(c.server for c in cells) if s.spawned
    }
    return [replace(c, server_version=versions.get(c.cell.server.path)) for c in checks]


def server_version(binary: str, name: str) -> str:
    """The binary's `--version`, as the run will record it; a binary that prints none (not
    llama-server, or one that dies at once) is one line naming it."""
    engine = get_engine(SERVER_ENGINE).configured(EngineOptions(binary=Path(binary).resolve()))
    try:
        return str(engine.runtime_info()["server_version"])
    except UserError as exc:
        raise UserError(f"sweep server {name}: {exc}") from None


class Headers:
    """Model headers read once per file for the whole sweep (reading Gemma 3's takes seconds)."""

    def __init__(self) -> None:
        self.facts: dict[Path, dict[str, Any] | UserError] = {}

    def get(self, path: Path) -> dict[str, Any]:
        if path not in self.facts:
            try:
                self.facts[path] = read_facts(path)
            except UserError as exc:
                self.facts[path] = exc
        found = self.facts[path]
        if isinstance(found, UserError):
            raise found
        return found


def memory_bytes(check: CellCheck, headers: Headers) -> int:
    """The cell's peak memory with every context at once, as `kvprobe run` estimates it (host
    memory; weights and caches go to the GPU where layers are offloaded)."""
    facts = [headers.get(p) for p in check.model_paths]
    need, _, _ = memory_need(
        facts,
        [CacheConfig(k, v) for k, v in check.configs],
        baseline=check.baseline,
        scenario=check.scenario,
        ctx=check.cell.ctx,
        mode="onepass",
        null_check=check.null_check,
    )
    return need.total


def model_key(check: CellCheck) -> str:
    """What cells share a speed: the same weights (and where they run: GPU, llama-server)."""
    server = f" {check.cell.server.path}" if check.cell.server.spawned else ""
    return "+".join(str(p) for p in check.model_paths) + (" gpu" if check.on_gpu else "") + server


class Calibration:
    """Seconds a cell takes: its rough guess times the ratio of measured to guessed seconds of
    the finished cells on the same weights, else of all finished cells."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[float, float]]] = {}  # model key -> (measured, rough)

    def observe(self, check: CellCheck, seconds: float) -> None:
        if seconds > 0:
            self.seen.setdefault(model_key(check), []).append((seconds, check.rough_seconds))

    def ratio(self, key: str | None = None) -> float | None:
        pairs = self.seen.get(key, []) if key is not None else [p for v in self.seen.values() for p in v]
        if not pairs:
            return None
        return sum(m for m, _ in pairs) / sum(r for _, r in pairs)

    def seconds(self, check: CellCheck) -> tuple[float, bool]:
        """The estimate, and whether it rests on measured cells."""
        ratio = self.ratio(model_key(check)) or self.ratio()
        return (check.rough_seconds * ratio, True) if ratio is not None else (check.rough_seconds, False)
