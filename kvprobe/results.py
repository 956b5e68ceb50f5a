"""The result file: the only interface between running and reporting.

Schema version 1 is documented field by field in docs/result-schema.md.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvprobe.errors import UserError
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
    result: dict[str, Any] = doc
    return result
