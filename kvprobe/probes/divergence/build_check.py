"""The build check of `--reference in-process`: a llama-server's f16 cache against kvprobe's own
llama.cpp's f16 cache on the same document, fed in the same batches (the server's request
sequence, kvprobe.engine.llamacpp.forks.feed_sampled), so that the only difference left is the
build: its kernels, its backend, its version. Pure functions of the two engines' rows; the run
(kvprobe.run.build_check) feeds them, the views say the sentence.

Three outcomes, in words a user can act on:
- `matches`: the mean KL's upper 95% bound is under the noise floor. Two identical builds on
  identical batches differ only by float rounding (a llama-server built from the llama.cpp
  kvprobe runs: mean KL 3.4e-6 on the default model), so the server computes
  what kvprobe computes, and its cache verdict is about the cache alone.
- `differs`: above the floor, but the upper bound is under the KL equivalence margin (another
  backend's kernels, another version): the build shifts the numbers less than a cache would
  have to, to count as worse, and the cache verdict (server against server) stands.
- `differs_near_margin`: the interval holds the margin: neither "stands" nor "a fault" is shown.
- `differs_beyond_margin`: the lower bound is at or above the margin: the build alone moves the
  distribution as much as a cache that is called worse: a fault of the build (the kind
  llama.cpp's tracker reports for backends), to report upstream; the cache verdict compares the
  server to itself and says nothing of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kvprobe.api.engine import TopLogprobs
from kvprobe.probes.divergence.metrics import block_bootstrap_mean, top_position_stats

# nats of mean KL. Identical builds on identical batches differ by float rounding only
# (measured, a llama-server built from the llama.cpp kvprobe runs: 3.4e-6 on the default model
# over 512 positions, 2e-7 on the tests' tiny model); the same build on other batches gives
# 7e-3 for f16 on the default model (docs/server-notes.md). 1e-3 sits between: rounding never
# crosses it, a change of kernels does.
NOISE_FLOOR = 1e-3
BLOCK = 16  # positions per bootstrap block: neighbouring positions share their context


def build_check(in_process: TopLogprobs, server: TopLogprobs, *, margin: float, seed: int) -> dict[str, Any]:
    """The check's record: KL(in-process f16 || server f16) over the top n of both plus a tail
    bucket at every sampled position (a lower bound, as the server's cache comparisons), with a
    block-bootstrap interval of its mean; top-1 agreement; the mean |difference| of the
    document tokens' log-probs; and the outcome against NOISE_FLOOR and `margin`."""
    _, _, by_config = top_position_stats(in_process, {"server": server})
    stats, _ = by_config["server"]
    kl = stats.kld
    blocks = [kl[i : i + BLOCK] for i in range(0, len(kl), BLOCK)]
    lo, hi = block_bootstrap_mean(blocks, seed=seed)
    mean = float(kl.mean()) if len(kl) else float("nan")
    exact = ~np.isnan(server.target_logprob)
    nll_diff = np.abs(in_process.target_logprob[exact] - server.target_logprob[exact])
    status = (
        "matches" if hi < NOISE_FLOOR
        else "differs" if hi < margin
        else "differs_beyond_margin" if lo >= margin
        else "differs_near_margin"  # the interval holds the margin: neither reading is shown
    )  # fmt: skip
    return {
        "status": status,
        "positions": len(kl),
        "kl_mean": mean,
        "kl_ci": [lo, hi],
        "kl_max": float(kl.max()) if len(kl) else float("nan"),
        "top1_agreement": float(stats.top1_agree.mean()) if len(kl) else float("nan"),
        "logprob_mean_abs_diff": float(nll_diff.mean()) if len(nll_diff) else float("nan"),
        "noise_floor": NOISE_FLOOR,
        "margin": margin,
    }


def build_check_sentence(check: Any) -> str:
    """One sentence: what the server's f16 is against kvprobe's, and what that means for the
    cache verdict. `check` is the result's `runtime.build_check` (a record or a dict)."""
    if check["status"] == "failed":
        return (
            f"Build check: not made ({check['reason']}); the cache verdict compares the server with "
            "itself and says nothing of its build."
        )
    if check.get("kl_mean") is None:  # nothing exact to compare (no position, or no exact log-prob)
        return (
            "Build check: no position could be compared; the cache verdict compares the server with itself."
        )
    kl = f"KL {check['kl_mean']:.2g} [{check['kl_ci'][0]:.2g}, {check['kl_ci'][1]:.2g}]"
    scope = (
        f"{check['positions']:,} positions of {check['tokens']:,} tokens, top-1 agreement "
        f"{check['top1_agreement']:.1%}"
    )
    if check["status"] == "matches":
        return (
            f"Build check: the server's f16 matches kvprobe's own llama.cpp f16 within the noise floor "
            f"({kl} < {check['noise_floor']:g}, {scope}): the cache verdict is about the cache."
        )
    if check["status"] == "differs":
        return (
            f"Build check: the server's f16 (its build and arguments) differs from kvprobe's llama.cpp "
            f"({kl}, {scope}), less than the equivalence margin {check['margin']:g}: the cache verdict "
            "(server against server) stands."
        )
    if check["status"] == "differs_near_margin":
        return (
            f"Build check: the server's f16 (its build and arguments) differs from kvprobe's llama.cpp "
            f"({kl}, {scope}), and the interval reaches the equivalence margin {check['margin']:g}: "
            "the build may shift the numbers as much as a cache called worse; rerun with a longer "
            "--ctx (more positions), and compare the server with itself for the cache."
        )
    return (
        f"Build check: the server itself (its build or arguments) differs from kvprobe's llama.cpp "
        f"({kl}, {scope}), beyond the equivalence margin {check['margin']:g}: a fault of the build, "
        "not of the cache (the cache verdict compares the server with itself); report it with both "
        "builds named."
    )
