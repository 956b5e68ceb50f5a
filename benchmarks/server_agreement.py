"""The server engine's validity, measured: the same run (model, scenario, seed, --ctx) through
llama.cpp in kvprobe's process and through a llama-server built from the same llama.cpp, compared
on the same tokens. Prints, per configuration: the needles' answer log-probs (mean and max
absolute difference over the same items), greedy-answer agreement, the divergence probe's KL at
the positions both measured (the server's top-n + tail KL over the in-process full KL: a lower
bound, so the ratio is at most about 1), top-1 agreement with the reference in each, and the two
verdicts.

    python benchmarks/server_agreement.py IN_PROCESS.json SERVER.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kvprobe.result.arrays import decode_array


def _items(doc: dict[str, Any], probe: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    keys = ("config", "doc", "ctx", "position", "key")
    return {tuple(i.get(k) for k in keys): i for i in doc["items"] if i.get("probe") == probe}


def _positions(doc: dict[str, Any]) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    section = doc.get("divergence") or {}
    stride = int(section.get("stride", 1))
    out = {}
    for rec in section.get("positions", []):
        arrays = {k: decode_array(rec[k]).astype(float) for k in ("kld", "top1_agree", "nll") if k in rec}
        n = len(arrays["nll"])
        arrays["position"] = 1 + stride * np.arange(n)
        out[(rec["config"], int(rec["doc"]))] = arrays
    return out


def needles(a: dict[str, Any], b: dict[str, Any]) -> None:
    ia, ib = _items(a, "needle"), _items(b, "needle")
    for config in sorted({k[0] for k in ia}):
        shared = [k for k in ia if k[0] == config and k in ib]
        if not shared:
            continue
        diff = np.array([abs(ia[k]["logprob"] - ib[k]["logprob"]) for k in shared])
        same = np.mean([ia[k]["correct"] == ib[k]["correct"] for k in shared])
        print(
            f"needle {config}: {len(shared)} items, answer log-prob |in-process - server| mean "
            f"{diff.mean():.4f} max {diff.max():.4f} nats; greedy correctness agrees on {same:.1%}"
        )


def divergence(a: dict[str, Any], b: dict[str, Any]) -> None:
    pa, pb = _positions(a), _positions(b)
    for key in sorted(k for k in pb if "kld" in pb[k] and k in pa and "kld" in pa[k]):
        full, trunc = pa[key], pb[key]
        shared, ia, ib = np.intersect1d(full["position"], trunc["position"], return_indices=True)
        f, t = full["kld"][ia], trunc["kld"][ib]
        print(
            f"divergence {key[0]} doc {key[1]}: {len(shared)} positions; server KL (top n + tail) "
            f"{t.mean():.4f} vs in-process full KL {f.mean():.4f} (ratio {t.sum() / f.sum():.3f}); "
            f"top-1 agreement with the reference {trunc['top1_agree'][ib].mean():.1%} (server) vs "
            f"{full['top1_agree'][ia].mean():.1%} (in-process)"
        )


def verdicts(a: dict[str, Any], b: dict[str, Any]) -> None:
    for label, doc in (("in-process", a), ("server", b)):
        configs = (doc.get("verdict") or {}).get("configs") or {}
        words = {c: (v.get("status"), (v.get("shape") or {}).get("kind")) for c, v in configs.items()}
        print(f"verdict ({label}): {words}")


def main() -> None:
    a, b = (json.loads(Path(p).read_text()) for p in sys.argv[1:3])
    print(
        f"engines: {a['runtime'].get('engine', 'llamacpp')} vs {b['runtime'].get('engine')} "
        f"({b['runtime'].get('server_version')})"
    )
    needles(a, b)
    divergence(a, b)
    verdicts(a, b)


if __name__ == "__main__":
    main()
