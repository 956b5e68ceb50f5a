"""Level and growth with context per result file and test configuration (kvprobe.stats.shape):
the figures of docs/measured.md's "Level and growth", read from saved results (an older file's
verdict is rebuilt from its items on loading):

    python benchmarks/level_growth.py results/examples/default-f16-q4_0-8192.json ...

One Markdown row per configuration: the shape in words, mean KL and the needles' answer log-prob
drop (level at the shortest lengths, growth per doubling with its 95% interval), and the rule
of thumb "a quantized KV cache degrades at 4K+" as judged by growth.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kvprobe.result.store import Result
from kvprobe.stats.shape import TrendDoc, growth_text, level_text, long_context_finding


def _cell(trends: list[TrendDoc], metric: str) -> str:
    found = next((t for t in trends if t["metric"] == metric), None)
    if found is None:
        return "-"
    growth = growth_text(found).removeprefix(found["words"] + " ") if found["growth"] is not None else "-"
    mark = " **grows**" if found["grows"] else ""
    return f"{level_text(found).removeprefix(found['words'] + ' ')}; per doubling {growth}{mark}"


def rows(path: Path) -> list[str]:
    doc = Result.load(path).doc.written()
    out = []
    for cid, v in ((doc.get("verdict") or {}).get("configs") or {}).items():
        shape = v.get("shape") or {}
        trends = shape.get("trends") or []
        finding, why = long_context_finding(shape, v, 4096)
        out.append(
            f"| {path.name} | {cid} | {shape.get('short', '-')} | {_cell(trends, 'kld_mean')} | "
            f"{_cell(trends, 'answer_logprob')} | {finding}: {why} |"
        )
    return out


def main(paths: list[str]) -> int:
    print("| result | config | shape | mean KL: level; growth | answer log-prob drop: level; growth | 4K+ |")
    print("|---|---|---|---|---|---|")
    for p in paths:
        print("\n".join(rows(Path(p))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
