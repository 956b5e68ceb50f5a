"""What a sweep asks for: the axes (models or weight pairs, llama-server binaries, cache sets,
--split-kv, contexts, scenarios, prompt formats), the cells left out, and the options every
cell's `kvprobe run` gets. Read from a TOML file or from the command line's comma lists;
every key and value is checked, and a bad one is one UserError naming the file, the key and
the fix.

Relative paths in a sweep file are taken from the file's folder, so a sweep file and its
models can move together."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kvprobe.api.cache_types import check_cache_type
from kvprobe.api.scenario import PromptFormat
from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import input_file, read_input_text
from kvprobe.infra.toml_check import Where, read_table
from kvprobe.plan.scenario import bundled_scenarios, load_scenario
from kvprobe.run.options import MAX_CTX, MIN_CTX

MAX_SWEEP_BYTES = 1 << 20  # a sweep file is a page of TOML
MAX_AXIS = 256  # values per axis: more is a generated file gone wrong, not a plan
DEFAULT_MODEL = "default"  # the embedded default model (the `model` extra)
# The servers axis' value for llama.cpp inside kvprobe's process (no server): a value of its own, so
# one sweep can set a llama-server build beside kvprobe's own llama.cpp; the axis left out is this.
IN_PROCESS = "in-process"


@dataclass(frozen=True)
class ModelChoice:
    """One value of the models axis: a GGUF file, or a REF/TEST pair of weight files for the
    2x2 weights-vs-KV design. Paths are absolute (or "default")."""

    path: str
    test: str | None = None
    name: str = ""  # the label in cell names and tables; default: the file's stem

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        ref = _stem(self.path)
        return f"{ref}-vs-{_stem(self.test)}" if self.test else ref

    @property
    def paths(self) -> list[str]:
        return [self.path, self.test] if self.test else [self.path]


def _stem(path: str) -> str:
    return DEFAULT_MODEL if path == DEFAULT_MODEL else Path(path).stem


@dataclass(frozen=True)
class ServerChoice:
    """One value of the servers axis: a llama-server binary (an absolute path) that each cell
    starts once per cache type (`kvprobe run --llama-server PATH`), or IN_PROCESS."""

    path: str = IN_PROCESS
    name: str = IN_PROCESS  # the label in cell names and tables (`_server_labels`)

    @property
    def spawned(self) -> bool:
        return self.path != IN_PROCESS


@dataclass(frozen=True)
class RunOptions:
    """Options every cell's `kvprobe run` gets ([run] in a sweep file). None: run's default."""

    threads: int | None = None
    seed: int = 0
    gpu_layers: int | None = None
    until_decided: bool | None = None
    baseline: str = "f16"
    max_contexts: int | None = None
    margins: dict[str, float] = field(default_factory=dict)
    no_repack: bool = False
    no_flash_attn: bool = False
    no_rotation: bool = False
    html: bool = True  # each cell's own page beside its result
    # --server-arg words of every spawned llama-server: only its cells get them (Cell.argv)
    server_args: list[str] = field(default_factory=list, metadata={"chars": 4096, "items": (0, 256)})

    def argv(self) -> list[str]:
        """These options as `kvprobe run` words (server_args aside: Cell.argv adds them)."""
        words: list[str] = []
        for flag, value in (
            ("--threads", self.threads),
            ("--gpu-layers", self.gpu_layers),
            ("--max-contexts", self.max_contexts),
        ):
            if value is not None:
                words += [flag, str(value)]
        if self.seed:
            words += ["--seed", str(self.seed)]
        if self.baseline != "f16":
            words += ["--baseline", self.baseline]
        if self.until_decided is not None:
            words.append("--until-decided" if self.until_decided else "--no-until-decided")
        for metric, margin in sorted(self.margins.items()):
            words += ["--margin", f"{metric}={margin:g}"]
        for flag, on in (
            ("--no-repack", self.no_repack),
            ("--no-flash-attn", self.no_flash_attn),
            ("--no-rotation", self.no_rotation),
            ("--no-html", not self.html),
        ):
            if on:
                words.append(flag)
        return words


AXES = ("models", "servers", "caches", "split_kv", "contexts", "scenarios", "formats")
# What an [[exclude]] entry may name: the axis value of a cell, by the cell's own word for it.
EXCLUDE_KEYS = ("model", "caches", "split_kv", "ctx", "scenario", "format", "server")


@dataclass(frozen=True)
class SweepSpec:
    """The axes, the cells left out, the options of every run, and where it came from."""

    name: str
    models: list[ModelChoice]
    caches: list[tuple[str, ...]]  # each a cache set: one cell runs all of them against one reference
    split_kv: list[bool]
    contexts: list[int]
    scenarios: list[str]  # bundled names or absolute paths
    formats: list[str]
    servers: list[ServerChoice] = field(default_factory=lambda: [ServerChoice()])
    exclude: list[dict[str, Any]] = field(default_factory=list)
    run: RunOptions = RunOptions()
    source: str = "the command line"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> SweepSpec:
        """The spec a manifest saved (spec.to_dict()); a manifest is checked before this."""
        return SweepSpec(
            name=data["name"],
            models=[ModelChoice(**m) for m in data["models"]],
            caches=[tuple(c) for c in data["caches"]],
            split_kv=list(data["split_kv"]),
            contexts=list(data["contexts"]),
            scenarios=list(data["scenarios"]),
            formats=list(data["formats"]),
            # absent from manifests written before the servers axis: in-process only
            servers=[ServerChoice(**s) for s in data.get("servers") or [asdict(ServerChoice())]],
            exclude=[dict(e) for e in data["exclude"]],
            run=RunOptions(**data["run"]),
            source=data["source"],
        )


@dataclass(frozen=True)
class _Where(Where):
    """Names the file (or the command line) and the key in every message; takes relative paths
    from the sweep file's folder."""

    base: Path

    def path(self, text: str) -> str:
        """A model, scenario or llama-server file, relative to the sweep file's folder."""
        p = Path(text).expanduser()
        return str(p if p.is_absolute() else (self.base / p).absolute())


@dataclass(frozen=True)
class ModelTable:
    """A model given as a table: {path, name}, or {ref, test, name} for the 2x2 design."""

    path: str | None = None
    ref: str | None = None
    test: str | None = None
    name: str = field(default="", metadata={"chars": 100})


@dataclass(frozen=True)
class ServerTable:
    """A llama-server binary given as a table: {path, name}."""

    path: str | None = None
    name: str = field(default="", metadata={"chars": 100})


# An axis: a non-empty list of at most MAX_AXIS values; a single value is a list of one.
_AXIS = {"one_or_list": True, "items": (1, MAX_AXIS), "too_many": "split the sweep"}


def _axis(**more: Any) -> Any:
    return {**_AXIS, **more}


@dataclass(frozen=True)
class Exclusion:
    """An [[exclude]] entry: axis values, by the cell's own word for each (EXCLUDE_KEYS)."""

    model: str | None = None
    caches: str | list[str] | None = None
    split_kv: bool | None = None
    ctx: int | None = None
    scenario: str | None = None
    format: str | None = None
    server: str | None = None


@dataclass(frozen=True, kw_only=True)
class SweepFile:
    """A sweep file's keys as its TOML gives them, each checked by kvprobe.infra.toml_check;
    `parse_sweep` then makes the paths absolute and checks what types cannot say."""

    name: str | None = field(default=None, metadata={"chars": 100})  # None: the file's stem
    models: list[str | ModelTable] = field(
        default_factory=lambda: [DEFAULT_MODEL],
        metadata=_axis(expects="a path, or a table with path or ref/test"),
    )
    caches: list[str | list[str]] = field(
        metadata=_axis(
            expects="a cache type or a list of them",
            missing='name the cache types to compare, e.g. caches = ["q8_0", "q4_0"]',
        )
    )
    split_kv: list[bool] = field(default_factory=lambda: [False], metadata=_AXIS)
    contexts: list[int] = field(default_factory=lambda: [8192], metadata=_axis(bounds=(MIN_CTX, MAX_CTX)))
    scenarios: list[str] = field(default_factory=lambda: ["default"], metadata=_AXIS)
    formats: list[PromptFormat] = field(default_factory=lambda: ["auto"], metadata=_AXIS)
    servers: list[str | ServerTable] = field(
        default_factory=lambda: [IN_PROCESS],
        metadata=_axis(
            expects=f'a llama-server binary\'s path, "{IN_PROCESS}", or a table with path and name'
        ),
    )
    exclude: list[Exclusion] = field(default_factory=list)
    run: RunOptions = RunOptions()


RUN_TYPES = tuple(f.name for f in fields(RunOptions))  # the keys of [run]
assert tuple(f.name for f in fields(Exclusion)) == EXCLUDE_KEYS


def _models(where: _Where, given: list[str | ModelTable]) -> list[ModelChoice]:
    out: list[ModelChoice] = []
    for i, value in enumerate(given):
        key = f"models[{i}]"
        if isinstance(value, str):
            out.append(_model(where, key, value))
        elif value.ref is not None or value.test is not None:
            if value.path is not None or value.ref is None or value.test is None:
                raise where.bad(key, "takes either path, or ref and test together (the 2x2 design)")
            ref, test = _model(where, f"{key}.ref", value.ref), _model(where, f"{key}.test", value.test)
            out.append(ModelChoice(ref.path, test.path, value.name))
        elif value.path is not None:
            out.append(ModelChoice(_model(where, f"{key}.path", value.path).path, None, value.name))
        else:
            raise where.bad(key, "names no model: give path, or ref and test")
    labels = [m.label for m in out]
    for label in labels:
        if labels.count(label) > 1 and len({m for m in out if m.label == label}) > 1:
            raise where.bad(
                "models",
                f'has two models called {label!r}: give each a name (models = [{{path = "…", name = "…"}}])',
            )
    return out


def _model(where: _Where, key: str, value: str) -> ModelChoice:
    if not value.strip():
        raise where.bad(key, f"must be the path of a GGUF file, got {value!r}")
    if value == DEFAULT_MODEL:
        return ModelChoice(DEFAULT_MODEL)
    path = where.path(value)
    if not Path(path).exists():
        raise where.bad(key, f"{value!r}: no such file ({path}); give the path of a GGUF file")
    if Path(path).is_dir():
        raise where.bad(key, f"{value!r} is a folder: give the path of a GGUF file")
    try:  # the bounded reader's own check: a FIFO, a device or a /proc file would hang the cell's run
        input_file(Path(path), "model file", "give the path of a GGUF file")
    except UserError as exc:
        raise where.bad(key, str(exc)) from None
    return ModelChoice(path)


FIX_SERVER = (
    f'give the path of a llama-server binary (llama.cpp\'s build/bin/llama-server), or "{IN_PROCESS}"'
)


def _server_path(where: _Where, key: str, value: str) -> str:
    """A llama-server binary: an executable file (what `kvprobe run --llama-server` asks)."""
    if value == IN_PROCESS:
        return IN_PROCESS
    if not value.strip():
        raise where.bad(key, f"must be {FIX_SERVER.removeprefix('give ')}, got {value!r}")
    path = Path(where.path(value))
    if not path.exists():
        raise where.bad(key, f"{value!r}: no such file ({path}); {FIX_SERVER}")
    if path.is_dir():
        raise where.bad(key, f"{value!r} is a folder: give the llama-server binary in it (bin/llama-server)")
    if not path.is_file() or not os.access(path, os.X_OK):
        raise where.bad(key, f"{value!r} is not an executable file: {FIX_SERVER} (chmod +x it if it is one)")
    return str(path)


def _server_labels(paths: list[str]) -> list[str]:
    """Each binary's label: the last folder that tells it from the others (".../cuda/bin/llama-server"
    and ".../vulkan/bin/llama-server": "cuda" and "vulkan"), with more folders where one does not;
    a single binary: its file name."""
    parts = [Path(p).parts[1:] for p in paths]
    tail = 0  # the trailing parts every path shares
    while (
        len(parts) > 1 and all(len(p) > tail + 1 for p in parts) and len({p[-1 - tail] for p in parts}) == 1
    ):
        tail += 1
    left = [p[: len(p) - tail] for p in parts]
    labels = ["-".join(p) for p in left]  # every folder, where fewer do not tell them apart
    for k in range(1, max((len(p) for p in left), default=0)):
        if len(set(short := ["-".join(p[-k:]) for p in left])) == len(left):
            return short
    return labels


def _servers(where: _Where, given: list[str | ServerTable]) -> list[ServerChoice]:
    paths, names = [], []
    for i, value in enumerate(given):
        key = f"servers[{i}]" + ("" if isinstance(value, str) else ".path")
        text = value if isinstance(value, str) else value.path
        if text is None:
            raise where.bad(f"servers[{i}]", "names no binary: give path (and a name)")
        paths.append(_server_path(where, key, text))
        names.append("" if isinstance(value, str) else value.name.strip())
    spawned = [p for p in paths if p != IN_PROCESS]
    # a label is a name: at most 100 characters (two left alike by the cut ask for names, below)
    derived = {p: label[-100:] for p, label in zip(spawned, _server_labels(spawned), strict=True)}
    out = [ServerChoice(p, n or derived.get(p, IN_PROCESS)) for p, n in zip(paths, names, strict=True)]
    for label in dict.fromkeys(s.name for s in out):
        if len({os.path.realpath(s.path) for s in out if s.name == label}) > 1:
            raise where.bad(
                "servers",
                f"has two servers called {label!r}: give each a name "
                '(servers = [{path = "…", name = "…"}])',
            )
    return out


def _caches(where: _Where, given: list[str | list[str]], key: str = "caches") -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for i, value in enumerate(given):
        members = value if isinstance(value, list) else [value]
        if not members:
            raise where.bad(f"{key}[{i}]", "is empty: give a cache type or a list of them")
        try:
            out.append(tuple(dict.fromkeys(check_cache_type(m) for m in members)))
        except UserError as exc:
            raise where.bad(f"{key}[{i}]", f"names {exc}") from None
    return out


def _scenarios(where: _Where, given: list[str]) -> list[str]:
    bundled = bundled_scenarios()
    out = []
    for i, value in enumerate(given):
        name = value if value in bundled else where.path(value)
        try:
            load_scenario(name)  # the whole file checked now, not when its cell starts
        except UserError as exc:
            raise where.bad(f"scenarios[{i}]", f"{value!r}: {exc}") from None
        out.append(name)
    return out


def _margins_as_floats(options: RunOptions) -> RunOptions:
    """[run]'s values are checked by `kvprobe run`'s own validation when the cells are planned;
    a margin written as a whole number is the same margin."""
    return replace(options, margins={k: float(v) for k, v in options.margins.items()})


def override_run(base: RunOptions, given: dict[str, Any], source: str) -> RunOptions:
    """`base` with the `given` options (the command line's over a sweep file's [run])."""
    return _margins_as_floats(
        read_table(RunOptions, given, _Where(f"sweep {source}", Path.cwd()), "run", base)
    )


def _exclude(where: _Where, raw: list[Any], given: list[Exclusion]) -> list[dict[str, Any]]:
    """Each entry as the axis values it names, in its own order (`raw`: the entries as written)."""
    out = []
    for i, (entry, parsed) in enumerate(zip(raw, given, strict=True)):
        if not entry:
            raise where.bad(
                f"exclude[{i}]", f"must be a table naming axis values ({', '.join(EXCLUDE_KEYS)})"
            )
        clean = {key: getattr(parsed, key) for key in entry}
        if "caches" in clean:
            clean["caches"] = list(_caches(where, [clean["caches"]], f"exclude[{i}].caches")[0])
        if "scenario" in clean and clean["scenario"] not in bundled_scenarios():
            clean["scenario"] = where.path(clean["scenario"])
        if "/" in clean.get("server", ""):  # a binary's path, not a server's name
            clean["server"] = where.path(clean["server"])
        out.append(clean)
    return out


def parse_sweep(data: Mapping[str, Any], source: str, base: Path) -> SweepSpec:
    """A SweepSpec from parsed TOML; every key checked."""
    where = _Where(f"sweep {source}", base)
    given = read_table(SweepFile, dict(data), where)
    name = (
        given.name if given.name is not None else (Path(source).stem if source.endswith(".toml") else "sweep")
    )
    if not name.strip():
        raise where.bad("name", "must be text of 1 to 100 characters")
    return SweepSpec(
        name=name,
        models=_models(where, given.models),
        caches=_caches(where, given.caches),
        split_kv=given.split_kv,
        contexts=given.contexts,
        scenarios=_scenarios(where, given.scenarios),
        formats=list(given.formats),
        servers=_servers(where, given.servers),
        exclude=_exclude(where, data.get("exclude", []), given.exclude),
        run=_margins_as_floats(given.run),
        source=source,
    )


def load_sweep(path: Path) -> SweepSpec:
    """A sweep file: bounded, UTF-8, valid TOML, every key checked."""
    text = read_input_text(path, "sweep file", "give a TOML file", max_bytes=MAX_SWEEP_BYTES)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"sweep {path}: not valid TOML ({exc}); fix the syntax") from None
    except RecursionError:
        raise UserError(f"sweep {path}: nested too deeply to be a sweep file; fix the file") from None
    return parse_sweep(data, str(path), path.absolute().parent)


def split_list(text: str) -> list[str]:
    """A command line's comma list ("a,b"); empty items are an error of the caller's to name."""
    return [part.strip() for part in text.split(",")]


def from_command_line(axes: Mapping[str, str | None], split_kv: bool, run: RunOptions) -> SweepSpec:
    """The short form: `--model a.gguf,b.gguf --cache q8_0,q4_0 --ctx 4096,8192` (and
    `--llama-server A,B`: llama-server binaries, "in-process" for kvprobe's own). A comma
    separates cells; a `+` joins what one cell runs together (`--cache q8_0+q4_0`: both against
    one reference; `--model REF.gguf+TEST.gguf`: the 2x2 design)."""
    where = _Where("sweep (command line)", Path.cwd())
    data: dict[str, Any] = {}
    option = {
        "models": "--model",
        "caches": "--cache",
        "contexts": "--ctx",
        "scenarios": "--scenario",
        "formats": "--prompt-format",
        "servers": "--llama-server",
    }
    for key, text in axes.items():
        if text is None:
            continue
        items = split_list(text)
        if any(not item for item in items):
            raise UserError(f"{option[key]} {text!r} has an empty item: separate values with single commas")
        if key == "models":
            data[key] = [{"ref": i.split("+")[0], "test": i.split("+")[1]} if "+" in i else i for i in items]
            if any(
                isinstance(m, dict) and len(i.split("+")) != 2 for m, i in zip(data[key], items, strict=True)
            ):
                raise UserError(f"--model {text!r}: a pair is REF.gguf+TEST.gguf, two files")
        elif key == "caches":
            data[key] = [i.split("+") for i in items]
        elif key == "contexts":
            try:
                data[key] = [int(i) for i in items]
            except ValueError:
                raise UserError(
                    f"--ctx {text!r}: give whole numbers of tokens, e.g. --ctx 4096,8192"
                ) from None
        else:
            data[key] = items
    if "caches" not in data:
        raise UserError("kvprobe sweep needs a sweep file or --cache TYPES (e.g. --cache q8_0,q4_0)")
    data["split_kv"] = [True] if split_kv else [False]
    spec = parse_sweep(data, "(command line)", where.base)
    return SweepSpec(**{**{f.name: getattr(spec, f.name) for f in fields(spec)}, "run": run})
