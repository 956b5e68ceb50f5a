"""The result file: the only interface between running and reporting.

Schema version 1 is documented field by field in docs/result-schema.md.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tempfile
import zlib
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from kvprobe import __version__
from kvprobe.errors import UserError
from kvprobe.metrics import REPETITION_MEANS
from kvprobe.probes.divergence import NULL_CONFIG, CurveSettings, bin_edges, divergence_curve
from kvprobe.scenario import DivergenceSpec, Scenario
from kvprobe.stats import bootstrap_mean_interval, wilson_interval

SCHEMA_VERSION = 1
T = TypeVar("T")


def utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _by_config_and_ctx(
    items: list[dict[str, Any]], probe: str
) -> list[tuple[tuple[str, int], list[dict[str, Any]]]]:
    """Items of one probe grouped by (config, ctx), ordered by ctx then config."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        if it["probe"] == probe:
            groups[(it["config"], it["ctx"])].append(it)
    return sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))


def needle_summary(items: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Long-format rows: accuracy (Wilson 95%) and mean answer log-prob (bootstrap 95%)
    per configuration and checkpoint."""
    rows: list[dict[str, Any]] = []
    for (config, ctx), group in _by_config_and_ctx(items, "needle"):
        n = len(group)
        k = sum(1 for it in group if it["correct"])
        lo, hi = wilson_interval(k, n)
        rows.append(
            {
                "probe": "needle",
                "metric": "accuracy",
                "config": config,
                "ctx": ctx,
                "value": k / n,
                "ci": [lo, hi],
                "n": n,
            }
        )
        lps = [it["logprob"] for it in group]
        lo, hi = bootstrap_mean_interval(lps, seed=seed)
        rows.append(
            {
                "probe": "needle",
                "metric": "answer_logprob",
                "config": config,
                "ctx": ctx,
                "value": sum(lps) / n,
                "ci": [lo, hi],
                "n": n,
            }
        )
    return rows


def repetition_summary(items: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Long-format rows per configuration and checkpoint: means of seq_rep_4, distinct_2,
    compression_ratio and divergence_index (bootstrap 95%), and loop_rate (Wilson 95%)."""
    rows: list[dict[str, Any]] = []
    for (config, ctx), group in _by_config_and_ctx(items, "repetition"):
        for metric in REPETITION_MEANS:
            values = [float(it[metric]) for it in group if it.get(metric) is not None]
            if not values:
                continue
            lo, hi = bootstrap_mean_interval(values, seed=seed)
            rows.append(
                {
                    "probe": "repetition",
                    "metric": metric,
                    "config": config,
                    "ctx": ctx,
                    "value": sum(values) / len(values),
                    "ci": [lo, hi],
                    "n": len(values),
                }
            )
        loops = sum(1 for it in group if it["loop"])
        lo, hi = wilson_interval(loops, len(group))
        rows.append(
            {
                "probe": "repetition",
                "metric": "loop_rate",
                "config": config,
                "ctx": ctx,
                "value": loops / len(group),
                "ci": [lo, hi],
                "n": len(group),
            }
        )
    return rows


# --- divergence: compact per-position arrays, the curve and the null check ------------------

ARRAY_DTYPES = {"kld": "<f4", "nll": "<f4", "top1_agree": "|u1"}


def encode_array(values: np.ndarray, dtype: str) -> dict[str, Any]:
    """A per-position array as little-endian binary, zlib-compressed, base64 text."""
    raw = np.ascontiguousarray(values, dtype=np.dtype(dtype)).tobytes()
    return {"dtype": dtype, "n": len(values), "zlib_base64": base64.b64encode(zlib.compress(raw, 9)).decode()}


def decode_array(record: dict[str, Any]) -> np.ndarray:
    """A per-position array back from the file; a damaged one is a UserError, not a traceback."""
    try:
        if record["dtype"] not in ARRAY_DTYPES.values():
            raise ValueError(f"unknown dtype {str(record['dtype'])[:20]!r}")
        raw = zlib.decompress(base64.b64decode(record["zlib_base64"], validate=True))
        values = np.frombuffer(raw, dtype=np.dtype(record["dtype"]))
    except (zlib.error, binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"a per-position array in the result is damaged ({type(exc).__name__}: {str(exc)[:80]}): "
            "use an intact copy of the file or run it again"
        ) from None
    if len(values) != record["n"]:
        raise UserError(f"a per-position array holds {len(values)} values, not the {record['n']} it declares")
    return values


def null_check_summary(
    reference: list[dict[str, np.ndarray]], null: list[dict[str, np.ndarray]]
) -> dict[str, Any]:
    """The reference against a second context with the same settings: on CPU every
    position must give KL exactly 0 and the same NLL, or the comparison measures noise."""
    kld = np.concatenate([d["kld"] for d in null])
    nll_gap = np.concatenate([np.abs(n["nll"] - r["nll"]) for n, r in zip(null, reference, strict=True)])
    return {
        "positions": len(kld),
        "max_kld": float(kld.max()),
        "mean_kld": float(kld.mean()),
        "nonzero_kld": int(np.count_nonzero(kld)),
        "top1_agree": float(np.concatenate([d["top1_agree"] for d in null]).mean()),
        "max_nll_gap": float(nll_gap.max()),
        "passed": bool(np.count_nonzero(kld) == 0 and nll_gap.max() == 0.0),
    }


def divergence_measured(
    arrays: dict[str, list[dict[str, np.ndarray]]],
    reference: str,
    checkpoints: list[int],
    spec: DivergenceSpec,
) -> dict[str, Any]:
    """The result file's `divergence` section as measured: the per-position arrays. The onset
    and the null check are statistics, filled in by `add_statistics` (the null context's arrays
    are not kept, so its summary is computed here, guarded like every statistic)."""
    configs = {c: a for c, a in arrays.items() if c != NULL_CONFIG}
    positions = [
        {"config": config, "doc": doc, **{k: encode_array(v, ARRAY_DTYPES[k]) for k, v in per_doc.items()}}
        for config, docs in configs.items()
        for doc, per_doc in enumerate(docs)
    ]
    return {
        "reference": reference,
        "documents": spec.documents,
        "bin_edges": bin_edges(checkpoints),
        "block": spec.block,
        "onset_reference": spec.onset_reference,
        "onset": {c: None for c in configs if c != reference},
        "null_check": None,
        "positions": positions,
    }


def divergence_arrays(doc: dict[str, Any]) -> dict[str, list[dict[str, np.ndarray]]]:
    """The per-position arrays back from a result document, per configuration and document."""
    out: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    for rec in doc["divergence"]["positions"]:  # written per configuration in run order, documents in order
        out[rec["config"]].append({k: decode_array(v) for k, v in rec.items() if k in ARRAY_DTYPES})
    return dict(out)


def build_result(
    *,
    created: str,
    command: str,
    model: dict[str, Any],
    models: dict[str, dict[str, Any]] | None = None,
    runtime: dict[str, Any],
    host: dict[str, Any],
    outcome: dict[str, Any],
    baseline: str | None,
    scenario: Scenario,
    run: dict[str, Any],
    warnings: list[str],
) -> dict[str, Any]:
    """The result document (schema 1) as measured: items, arrays and provenance. `summary`,
    the divergence onset and `verdict` are empty until `add_statistics` fills them, so the
    measurements can be written before any statistic can fail."""
    divergence = None
    if outcome["divergence_arrays"] and baseline is not None:
        divergence = divergence_measured(
            outcome["divergence_arrays"], baseline, outcome["checkpoints"], scenario.divergence
        )
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kvprobe_version": __version__,
        "created": created,
        "command": command,
        "model": model,
        "runtime": runtime,
        "host": host,
        "models": models,
        "configs": [
            {**a, "model_sha256": (models[a["model"]] if models else model)["sha256"]}
            for a in outcome["applied"]
        ],
        "baseline": baseline,
        "scenario": {"name": scenario.name, "sha256": scenario.sha256, "spec": scenario.to_dict()},
        "run": run,
        "items": outcome["items"],
        "text_items": outcome["text_items"],
        "summary": [],
        "divergence": divergence,
        "timing": outcome["timing"],
        "warnings": warnings,
        "verdict": None,
        "statistics": {"complete": False, "errors": []},
    }
    null = outcome["divergence_arrays"].get(NULL_CONFIG) if divergence else None
    if divergence and null:
        reference = outcome["divergence_arrays"][baseline]
        divergence["null_check"] = _guarded(doc, "null check", lambda: null_check_summary(reference, null))
    return doc


def _guarded(doc: dict[str, Any], what: str, compute: Callable[[], T]) -> T | None:
    """Run one statistic; a failure is recorded in the document instead of losing the run."""
    try:
        return compute()
    except Exception as exc:  # any failure of a statistic: the measurements must survive it
        doc["statistics"]["errors"].append({"what": what, "error": f"{type(exc).__name__}: {exc}"[:500]})
        return None


def add_statistics(
    doc: dict[str, Any], arrays: dict[str, list[dict[str, np.ndarray]]] | None = None
) -> dict[str, Any]:
    """Summary rows, the divergence onset and the verdict, from the document's own items and
    per-position arrays. `arrays` are the run's own (float64) arrays; without them the file's
    float32 copies are decoded, which agree to about 1e-7 relative. Each statistic is guarded:
    what fails is listed in `statistics.errors` and the rest is still computed."""
    earlier = [e for e in (doc.get("statistics") or {}).get("errors", []) if e.get("what") == "null check"]
    doc["statistics"] = {"complete": False, "errors": earlier}  # the null check ran while measuring
    seed = doc["run"]["seed"]
    items, text_items = doc["items"], doc.get("text_items") or []
    summary: list[dict[str, Any]] = []
    summary += _guarded(doc, "needle summary", lambda: needle_summary(items, seed=seed)) or []
    summary += (
        _guarded(doc, "repetition summary", lambda: repetition_summary(items + text_items, seed=seed)) or []
    )
    section = doc.get("divergence")
    if section and doc.get("baseline") is not None:

        def curve() -> tuple[list[dict[str, Any]], dict[str, Any]]:
            cs = CurveSettings(doc["run"]["checkpoints"], section["block"], section["onset_reference"], seed)
            measured = {c: a for c, a in arrays.items() if c != NULL_CONFIG} if arrays else None
            return divergence_curve(measured or divergence_arrays(doc), section["reference"], cs)

        found = _guarded(doc, "divergence curve", curve)
        if found is not None:
            rows, onsets = found
            summary += rows
            section["onset"] = onsets
    doc["summary"] = summary
    from kvprobe.verdict import build_verdict  # the verdict reads the assembled document

    doc["verdict"] = _guarded(doc, "verdict", lambda: build_verdict(doc, seed))
    doc["statistics"]["complete"] = not doc["statistics"]["errors"]
    return doc


def default_out_path(created: str, model_name: str, config_ids: list[str], ctx: int) -> Path:
    stamp = created.replace("-", "").replace(":", "").replace("Z", "")
    stem = Path(model_name).stem.replace(" ", "_")
    caches = "+".join(c.replace("=", "").replace(",", "-") for c in config_ids)
    return Path("results") / f"{stamp}-{stem}-{caches}-{ctx}.json"


def finite_json(value: Any, where: str = "$") -> tuple[Any, list[str]]:
    """`value` with every NaN and infinity replaced by null (JSON has neither), and the
    JSON paths where that happened; numpy scalars become plain numbers."""
    if isinstance(value, dict):
        out_d: dict[str, Any] = {}
        found: list[str] = []
        for k, v in value.items():
            out_d[k], sub = finite_json(v, f"{where}.{k}")
            found += sub
        return out_d, found
    if isinstance(value, (list, tuple)):
        out_l: list[Any] = []
        found = []
        for i, v in enumerate(value):
            item, sub = finite_json(v, f"{where}[{i}]")
            out_l.append(item)
            found += sub
        return out_l, found
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None, [where]
    return value, []


def write_result(doc: dict[str, Any], path: Path) -> Path:
    """Write atomically and durably: a temporary file in the same folder, fsync'd, renamed,
    and the folder fsync'd. NaN and infinity become null, listed in `non_finite`. If the
    folder cannot take it (disk full, read-only), the result goes to a recovery file in the
    temporary directory and the UserError says where: a finished run is never lost."""
    clean, non_finite = finite_json({k: v for k, v in doc.items() if k != "non_finite"})
    clean["non_finite"] = non_finite
    text = json.dumps(clean, indent=1, allow_nan=False) + "\n"
    try:
        _write_atomically(text, path)
    except OSError as exc:
        recovery = _recover(text, path)
        where = f"saved it to {recovery}" if recovery else "could not save it anywhere else either"
        raise UserError(
            f"cannot write the result to {path} ({exc.strerror or exc}); kvprobe {where}: "
            "free space or choose another --out"
        ) from None
    return path


def _write_atomically(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a result file is an ordinary file
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # best effort: the rename itself survives a crash (not every OS or file system allows it)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _recover(text: str, path: Path) -> Path | None:
    try:
        fd, name = tempfile.mkstemp(prefix=f"kvprobe-recovered-{path.stem}-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            with contextlib.suppress(OSError):  # a recovery file that is not synced beats none
                os.fsync(fh.fileno())
        return Path(name)
    except OSError:
        return None


def load_result(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"result file {path} not found") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"result file {path} is not valid JSON ({exc})") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version != SCHEMA_VERSION:
        raise UserError(
            f"result file {path} has schema_version {version!r}; this kvprobe reads version {SCHEMA_VERSION}"
        )
    missing = [k for k in REQUIRED_FIELDS if k not in doc]
    if missing:
        raise UserError(f"result file {path} is incomplete: missing {', '.join(missing)}; run it again")
    result: dict[str, Any] = doc
    return result


REQUIRED_FIELDS = ("configs", "baseline", "model", "scenario", "run", "items", "summary")
