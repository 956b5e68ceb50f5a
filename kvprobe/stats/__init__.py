"""The statistics over a result document: pure functions of its items and rows. Paired tests
and intervals (`inference`), the onset, effective context and decay (`analysis`), equivalence
against stated margins (`equivalence`), the verdict and its look-by-look form for
`--until-decided` (`verdict`, `sequential`), level and growth with context (`growth`), the 2x2
weights-vs-KV design (`weights_vs_kv`), each probe on its own (`by_probe`), the decision
(`decision`), two results compared (`compare`), all said in words (`words`). It imports the
result and the floors below it, never what shows or runs (views, run, sweep, cli)."""

from kvprobe.api.result import ResultDoc
from kvprobe.result.migrations import Rebuild, rebuild_with


def _rebuild(doc: ResultDoc, pending: Rebuild) -> None:
    """An older file's statistics, recomputed when it is read (kvprobe.result.migrations)."""
    # The verdict loads scipy's tests and the doctor's gguf: only a command that reads an older
    # file pays for them here.
    from kvprobe.stats.statistics import rebuild

    rebuild(doc, pending)


rebuild_with(_rebuild)
