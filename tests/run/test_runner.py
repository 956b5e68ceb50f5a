"""The runner's hand-over to the probes that read the distribution (kvprobe.run.runner): with an
engine without full logits, what it asks for and how it hands the rows on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kvprobe.api.engine import TopLogprobs
from kvprobe.engine.llamacpp.model import Model
from kvprobe.plan.scenario import load_scenario
from kvprobe.probes.divergence.probe import DivergenceRun
from kvprobe.run.request import RunSettings
from kvprobe.run.runner import Runner, _handing_top


def rows(positions: np.ndarray, top_id: int) -> TopLogprobs:
    """Two-token top lists at `positions`, the most likely token `top_id`."""
    k = len(positions)
    ids = np.tile(np.array([top_id, 7 - top_id], dtype=np.int32), (k, 1))
    logprobs = np.tile(np.log([0.75, 0.25]).astype(np.float32), (k, 1))
    target = np.full(k, np.log(0.25))
    return TopLogprobs(positions.astype(np.int64), ids, logprobs, target, target.copy())


def test_top_rows_reach_the_readers_by_configuration(tiny_model: Model, tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('probes = ["divergence"]\n[plan]\ndocuments = 1\n[divergence]\nserver_stride = 8\n'
                        "server_n_probs = 50\n")  # fmt: skip
    runner = Runner(
        tiny_model, load_scenario(str(scenario)), RunSettings(512, 0, "onepass", True, True), baseline="f16"
    )
    document = runner.documents[0]
    readers = runner.readers(document)
    assert [type(r) for r in readers] == [DivergenceRun]
    top = runner._top_request(document, readers)
    assert (list(top.document), top.stride, top.n_probs) == (document.tokens[:512], 8, 50)
    at = np.arange(1, 200, 8)
    # in the order of the contexts' names: q8_0's top token differs from f16's
    _handing_top(readers, document, ["f16", "q8_0"], [0.0])([rows(at, 3), rows(at, 4)])
    recorder = readers[0].recorder if isinstance(readers[0], DivergenceRun) else None
    assert recorder is not None
    test = recorder.records[("q8_0", document.index)]
    assert len(test.kld[0]) == len(at)
    assert not test.top1_agree[0].any()
    # p = (.75, .25) and q = (.25, .75) over tokens 3 and 4, the tail empty: KL = ln(3) / 2
    np.testing.assert_allclose(test.kld[0], np.log(3) / 2, rtol=1e-6)
    assert recorder.stride == 8
