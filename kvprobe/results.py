"""The result file: the only interface between running and reporting.

Schema version 1 is documented field by field in docs/result-schema.md.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import zlib
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kvprobe import __version__
from kvprobe.errors import UserError
from kvprobe.probes.divergence import NULL_CONFIG, CurveSettings, bin_edges, divergence_curve
from kvprobe.scenario import DivergenceSpec, Scenario
from kvprobe.stats import bootstrap_mean_interval, wilson_interval

SCHEMA_VERSION = 1


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


REPETITION_MEANS = ("seq_rep_4", "distinct_2", "compression_ratio", "divergence_index")


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
    raw = zlib.decompress(base64.b64decode(record["zlib_base64"]))
    values = np.frombuffer(raw, dtype=np.dtype(record["dtype"]))
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


def divergence_section(
    arrays: dict[str, list[dict[str, np.ndarray]]],
    reference: str,
    checkpoints: list[int],
    spec: DivergenceSpec,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Summary rows of the divergence probe, and the result file's `divergence` section."""
    null = arrays.get(NULL_CONFIG)
    configs = {c: a for c, a in arrays.items() if c != NULL_CONFIG}
    cs = CurveSettings(checkpoints, spec.block, spec.onset_reference, seed)
    rows, onsets = divergence_curve(configs, reference, cs)
    positions = [
        {"config": config, "doc": doc, **{k: encode_array(v, ARRAY_DTYPES[k]) for k, v in per_doc.items()}}
        for config, docs in configs.items()
        for doc, per_doc in enumerate(docs)
    ]
    section = {
        "reference": reference,
        "documents": spec.documents,
        "bin_edges": bin_edges(checkpoints),
        "block": spec.block,
        "onset_reference": spec.onset_reference,
        "onset": onsets,
        "null_check": null_check_summary(configs[reference], null) if null else None,
        "positions": positions,
    }
    return rows, section


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
    """The result document (schema 1) from a run's plain-data outcome and its provenance."""
    seed = run["seed"]
    summary = needle_summary(outcome["items"], seed=seed) + repetition_summary(
        outcome["items"] + outcome["text_items"], seed=seed
    )
    divergence = None
    if outcome["divergence_arrays"] and baseline is not None:
        rows, divergence = divergence_section(
            outcome["divergence_arrays"], baseline, outcome["checkpoints"], scenario.divergence, seed
        )
        summary += rows
    doc = {
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
        "summary": summary,
        "divergence": divergence,
        "timing": outcome["timing"],
        "warnings": warnings,
    }
    from kvprobe.verdict import build_verdict  # the verdict reads the assembled document

    doc["verdict"] = build_verdict(doc, seed)
    return doc


def default_out_path(created: str, model_name: str, config_ids: list[str], ctx: int) -> Path:
    stamp = created.replace("-", "").replace(":", "").replace("Z", "")
    stem = Path(model_name).stem.replace(" ", "_")
    caches = "+".join(c.replace("=", "").replace(",", "-") for c in config_ids)
    return Path("results") / f"{stamp}-{stem}-{caches}-{ctx}.json"


def write_result(doc: dict[str, Any], path: Path) -> Path:
    """Write atomically: a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a result file is an ordinary file
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1, allow_nan=False, default=_nan_safe)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _nan_safe(obj: object) -> object:
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


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
