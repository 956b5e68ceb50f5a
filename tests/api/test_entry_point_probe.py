"""A third-party probe, installed from its own package by pip, is found through the
`kvprobe.probes` entry-point group and runs end to end with no change to kvprobe.

The package is a real wheel (built here with zipfile, as any build backend would lay it out)
installed with `pip install --target`, so the test environment itself is left as it was."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error

PLUGIN = '''
"""kvprobe-echo: a probe that teacher-forces one short answer at every checkpoint."""

from dataclasses import dataclass
from typing import Any, ClassVar

from kvprobe.api import Budget, Metric, Probe, ProbeRun, Row, RunSetup, by_config_and_ctx


@dataclass(frozen=True)
class EchoSpec:
    prompt: str = "\\n\\nThe word is"
    answer: str = " apple"


class EchoRun(ProbeRun):
    label = "echo"

    def __init__(self, setup: RunSetup):
        spec = setup.scenario.spec(EchoSpec)
        self.prompt, self.answer = setup.model.tokenize(spec.prompt), setup.model.tokenize(spec.answer)
        per_checkpoint = len(self.prompt) + len(self.answer) - 1
        n = len(setup.documents) * len(setup.checkpoints)
        self.budget = Budget(fork_cells=per_checkpoint + 1, sequences=1, tokens=n * per_checkpoint)

    def at_checkpoint(self, context: Any, config: str, document: Any, length: int) -> list[Row]:
        scored = context.score(self.prompt, self.answer)
        return [{"probe": "echo", "config": config, "doc": document.index, "ctx": length,
                 "hit": scored.argmax_match, "logprob": round(scored.logprob, 6)}]


class EchoProbe(Probe):
    name = "echo"
    sections: ClassVar[dict[str, type]] = {"echo": EchoSpec}
    summary_label = "echo summary"

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (Metric("echo", "echo_hit", binary=True, lower_is_worse=True, field="hit",
                       key=lambda it: (it["doc"], it["ctx"]), compared=True),)

    def start(self, setup: RunSetup) -> EchoRun:
        return EchoRun(setup)

    def summary(self, result: dict[str, Any], seed: int, measured: Any) -> list[Row]:
        return [
            {"probe": "echo", "metric": "echo_hit", "config": config, "ctx": ctx,
             "value": sum(it["hit"] for it in group) / len(group), "ci": [0.0, 1.0], "n": len(group)}
            for (config, ctx), group in by_config_and_ctx(result["items"], "echo")
        ]


PROBE = EchoProbe()
'''


def _wheel(folder: Path) -> Path:
    """kvprobe_echo-0.1-py3-none-any.whl: the module, its metadata and its entry point."""
    dist = "kvprobe_echo-0.1.dist-info"
    files = {
        "kvprobe_echo.py": PLUGIN.encode(),
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: kvprobe-echo\nVersion: 0.1\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": b"[kvprobe.probes]\necho = kvprobe_echo:PROBE\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / "kvprobe_echo-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--root-user-action=ignore",
         "--target", str(site), str(_wheel(root))],
        check=True,
    )  # fmt: skip
    assert (site / "kvprobe_echo-0.1.dist-info" / "entry_points.txt").is_file()
    return site


def _kvprobe(site: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "kvprobe", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def test_a_probe_installed_by_entry_point_runs_end_to_end(
    plugin_site: Path, tiny_model_path: Path, tmp_path: Path
) -> None:
    scenario = tmp_path / "echo.toml"
    scenario.write_text(
        'name = "echo"\nprobes = ["echo", "needle"]\n[plan]\ndocuments = 2\n[needle]\nper_segment = 1\n'
        '[echo]\nanswer = " apple"\n'
    )
    out = tmp_path / "echo.json"
    args = ["run", "--model", str(tiny_model_path), "--scenario", str(scenario), "--cache", "q8_0",
            "--ctx", "1536", "--threads", "2", "--out", str(out)]  # fmt: skip
    proc = _kvprobe(plugin_site, *args)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    echo_items = [it for it in doc["items"] if it["probe"] == "echo"]
    assert sorted((it["config"], it["doc"], it["ctx"]) for it in echo_items) == sorted(
        (c, d, L) for c in ("f16", "q8_0") for d in (0, 1) for L in (1024, 1536)
    )
    assert {r["metric"] for r in doc["summary"] if r["probe"] == "echo"} == {"echo_hit"}
    assert doc["scenario"]["spec"]["echo"] == {"prompt": "\n\nThe word is", "answer": " apple"}
    assert any(it["probe"] == "needle" for it in doc["items"])  # the built-in one ran beside it
    # the result file is read back (report), and compared, like any other
    report = _kvprobe(plugin_site, "report", str(out))
    assert report.returncode == 0, report.stderr
    compared = _kvprobe(plugin_site, "compare", str(out), str(out), "--json", "--fail-on", "echo_hit:-0.5")
    assert compared.returncode == 0, compared.stderr
    assert any(r["metric"] == "echo_hit" for r in json.loads(compared.stdout)["rows"])

    # without the package, the same scenario has a section (and a probe) kvprobe does not know
    missing = _kvprobe(None, *args[:-1], str(tmp_path / "other.json"))
    assert_one_line_error(missing, "key 'echo' is unknown")


def test_a_broken_plug_in_is_named_in_one_line(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "kvprobe_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kvprobe-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kvprobe.probes]\nbroken = kvprobe_broken_missing:PROBE\n")
    proc = _kvprobe(site, "scenarios")
    assert_one_line_error(proc, "probe plug-in 'broken'", "fix or uninstall its package")
