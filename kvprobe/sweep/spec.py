"""What a sweep asks for: the axes (models or weight pairs, cache sets, --split-kv, contexts,
scenarios, prompt formats), the cells left out, and the options every cell's `kvprobe run`
gets. Read from a TOML file or from the command line's comma lists; every key and value is
checked, and a bad one is one UserError naming the file, the key and the fix.

Relative paths in a sweep file are taken from the file's folder, so a sweep file and its
models can move together."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kvprobe.api.cache_types import check_cache_type
from kvprobe.infra.errors import UserError, did_you_mean
from kvprobe.infra.paths import input_file, read_input_text
from kvprobe.plan.chat import PROMPT_FORMATS

MAX_SWEEP_BYTES = 1 << 20  # a sweep file is a page of TOML
MAX_AXIS = 256  # values per axis: more is a generated file gone wrong, not a plan
DEFAULT_MODEL = "default"  # the embedded default model (the `model` extra)


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

    def argv(self) -> list[str]:
        """These options as `kvprobe run` words."""
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


AXES = ("models", "caches", "split_kv", "contexts", "scenarios", "formats")
# What an [[exclude]] entry may name: the axis value of a cell, by the cell's own word for it.
EXCLUDE_KEYS = ("model", "caches", "split_kv", "ctx", "scenario", "format")


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
            exclude=[dict(e) for e in data["exclude"]],
            run=RunOptions(**data["run"]),
            source=data["source"],
        )


class _Where:
    """Names the file (or the command line) and the key in every message."""

    def __init__(self, source: str, base: Path) -> None:
        self.source, self.base = source, base

    def bad(self, key: str, problem: str) -> UserError:
        return UserError(f"sweep {self.source}: {key} {problem}")

    def path(self, text: str) -> str:
        """A model or scenario file, relative to the sweep file's folder."""
        p = Path(text).expanduser()
        return str(p if p.is_absolute() else (self.base / p).absolute())


def _type_name(value: Any) -> str:
    return {
        bool: "true/false",
        int: "a whole number",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _axis(where: _Where, key: str, raw: Any) -> list[Any]:
    """An axis: a non-empty list of at most MAX_AXIS values (a single value is a list of one)."""
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise where.bad(key, "is empty: give at least one value, or leave the key out for its default")
    if len(values) > MAX_AXIS:
        raise where.bad(key, f"has {len(values):,} values, more than {MAX_AXIS}: split the sweep")
    return values


def _models(where: _Where, raw: Any) -> list[ModelChoice]:
    out: list[ModelChoice] = []
    for i, value in enumerate(_axis(where, "models", raw)):
        key = f"models[{i}]"
        if isinstance(value, str):
            out.append(_model(where, key, value))
        elif isinstance(value, dict):
            allowed = {"path", "ref", "test", "name"}
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise where.bad(
                    f"{key}.{unknown[0]}",
                    f"is unknown{did_you_mean(unknown[0], allowed)} "
                    "(a model is a path, {path, name} or {ref, test, name})",
                )
            name = value.get("name", "")
            if not isinstance(name, str) or len(name) > 100:
                raise where.bad(f"{key}.name", "must be text of at most 100 characters")
            if "ref" in value or "test" in value:
                if "path" in value or not ("ref" in value and "test" in value):
                    raise where.bad(key, "takes either path, or ref and test together (the 2x2 design)")
                ref, test = (
                    _model(where, f"{key}.ref", value["ref"]),
                    _model(where, f"{key}.test", value["test"]),
                )
                out.append(ModelChoice(ref.path, test.path, name))
            elif "path" in value:
                out.append(ModelChoice(_model(where, f"{key}.path", value["path"]).path, None, name))
            else:
                raise where.bad(key, "names no model: give path, or ref and test")
        else:
            raise where.bad(key, f"must be a path, or a table with path or ref/test, got {_type_name(value)}")
    labels = [m.label for m in out]
    for label in labels:
        if labels.count(label) > 1 and len({m for m in out if m.label == label}) > 1:
            raise where.bad(
                "models",
                f'has two models called {label!r}: give each a name (models = [{{path = "…", name = "…"}}])',
            )
    return out


def _model(where: _Where, key: str, value: Any) -> ModelChoice:
    if not isinstance(value, str) or not value.strip():
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


def _caches(where: _Where, raw: Any) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for i, value in enumerate(_axis(where, "caches", raw)):
        members = value if isinstance(value, list) else [value]
        if not members or not all(isinstance(m, str) for m in members):
            raise where.bad(f"caches[{i}]", f"must be a cache type or a list of them, got {value!r}")
        try:
            types = tuple(dict.fromkeys(check_cache_type(m) for m in members))
        except UserError as exc:
            raise where.bad(f"caches[{i}]", f"names {exc}") from None
        out.append(types)
    return out


def _typed(where: _Where, key: str, raw: Any, kind: type, check: Any = None) -> list[Any]:
    values = _axis(where, key, raw)
    for i, v in enumerate(values):
        if type(v) is not kind:
            raise where.bad(f"{key}[{i}]", f"must be {_type_name(kind())}, got {v!r}")
        if check is not None:
            check(f"{key}[{i}]", v)
    return values


def _contexts(where: _Where, raw: Any) -> list[int]:
    from kvprobe.cli.options import MAX_CTX, MIN_CTX

    def check(key: str, v: int) -> None:
        if not MIN_CTX <= v <= MAX_CTX:
            raise where.bad(key, f"must be from {MIN_CTX} to {MAX_CTX:,} tokens, got {v:,}")

    return _typed(where, "contexts", raw, int, check)


def _scenarios(where: _Where, raw: Any) -> list[str]:
    from kvprobe.plan.scenario import bundled_scenarios, load_scenario

    bundled = bundled_scenarios()
    out = []
    for i, value in enumerate(_typed(where, "scenarios", raw, str)):
        name = value if value in bundled else where.path(value)
        try:
            load_scenario(name)  # the whole file checked now, not when its cell starts
        except UserError as exc:
            raise where.bad(f"scenarios[{i}]", f"{value!r}: {exc}") from None
        out.append(name)
    return out


def _formats(where: _Where, raw: Any) -> list[str]:
    def check(key: str, v: str) -> None:
        if v not in PROMPT_FORMATS:
            raise where.bad(key, f"must be one of {', '.join(PROMPT_FORMATS)}, got {v!r}")

    return _typed(where, "formats", raw, str, check)


RUN_TYPES: dict[str, tuple[type, ...]] = {
    "threads": (int,),
    "seed": (int,),
    "gpu_layers": (int,),
    "until_decided": (bool,),
    "baseline": (str,),
    "max_contexts": (int,),
    "margins": (dict,),
    "no_repack": (bool,),
    "no_flash_attn": (bool,),
    "no_rotation": (bool,),
    "html": (bool,),
}


def run_options(where: _Where, raw: Any, base: RunOptions | None = None) -> RunOptions:
    """[run]: each key of RunOptions, typed; its values are checked by `kvprobe run`'s own
    validation when the cells are planned."""
    if not isinstance(raw, dict):
        raise where.bad("run", "must be a table of kvprobe run options")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in RUN_TYPES:
            raise where.bad(
                f"run.{key}", f"is unknown{did_you_mean(key, RUN_TYPES)} (allowed: {', '.join(RUN_TYPES)})"
            )
        if type(value) not in RUN_TYPES[key]:
            raise where.bad(f"run.{key}", f"must be {_type_name(RUN_TYPES[key][0]())}, got {value!r}")
        values[key] = value
    margins = values.get("margins", {})
    for metric, value in margins.items():
        if type(value) not in (int, float):
            raise where.bad(f"run.margins.{metric}", f"must be a number, got {value!r}")
    if margins:
        values["margins"] = {k: float(v) for k, v in margins.items()}
    start = asdict(base or RunOptions())
    return RunOptions(**{**start, **values})


def override_run(base: RunOptions, given: dict[str, Any], source: str) -> RunOptions:
    """`base` with the `given` options (the command line's over a sweep file's [run])."""
    return run_options(_Where(source, Path.cwd()), given, base)


def _exclude(where: _Where, raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise where.bad("exclude", "must be a list of tables ([[exclude]] entries)")
    out = []
    for i, entry in enumerate(raw):
        key = f"exclude[{i}]"
        if not isinstance(entry, dict) or not entry:
            raise where.bad(key, f"must be a table naming axis values ({', '.join(EXCLUDE_KEYS)})")
        for name in entry:
            if name not in EXCLUDE_KEYS:
                raise where.bad(
                    f"{key}.{name}",
                    f"is unknown{did_you_mean(name, EXCLUDE_KEYS)} (allowed: {', '.join(EXCLUDE_KEYS)})",
                )
        clean = dict(entry)
        if "caches" in clean:
            clean["caches"] = list(_caches(where, [clean["caches"]])[0])
        if "scenario" in clean and isinstance(clean["scenario"], str):
            from kvprobe.plan.scenario import bundled_scenarios

            if clean["scenario"] not in bundled_scenarios():
                clean["scenario"] = where.path(clean["scenario"])
        out.append(clean)
    return out


TOP_KEYS = ("name", *AXES, "exclude", "run")


def parse_sweep(data: Mapping[str, Any], source: str, base: Path) -> SweepSpec:
    """A SweepSpec from parsed TOML; every key checked."""
    where = _Where(source, base)
    for key in data:
        if key not in TOP_KEYS:
            raise where.bad(key, f"is unknown{did_you_mean(key, TOP_KEYS)} (allowed: {', '.join(TOP_KEYS)})")
    if "caches" not in data:
        raise where.bad(
            "caches", 'is missing: name the cache types to compare, e.g. caches = ["q8_0", "q4_0"]'
        )
    name = data.get("name", Path(source).stem if source.endswith(".toml") else "sweep")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise where.bad("name", "must be text of 1 to 100 characters")
    return SweepSpec(
        name=name,
        models=_models(where, data.get("models", [DEFAULT_MODEL])),
        caches=_caches(where, data["caches"]),
        split_kv=_typed(where, "split_kv", data.get("split_kv", [False]), bool),
        contexts=_contexts(where, data.get("contexts", [8192])),
        scenarios=_scenarios(where, data.get("scenarios", ["default"])),
        formats=_formats(where, data.get("formats", ["auto"])),
        exclude=_exclude(where, data.get("exclude", [])),
        run=run_options(where, data.get("run", {})),
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
    """The short form: `--model a.gguf,b.gguf --cache q8_0,q4_0 --ctx 4096,8192`. A comma
    separates cells; a `+` joins what one cell runs together (`--cache q8_0+q4_0`: both against
    one reference; `--model REF.gguf+TEST.gguf`: the 2x2 design)."""
    where = _Where("(command line)", Path.cwd())
    data: dict[str, Any] = {}
    option = {
        "models": "--model",
        "caches": "--cache",
        "contexts": "--ctx",
        "scenarios": "--scenario",
        "formats": "--prompt-format",
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
