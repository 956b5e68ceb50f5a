from pathlib import Path

import pytest

from kvprobe.infra.errors import UserError
from kvprobe.plan.documents import default_checkpoints
from kvprobe.plan.scenario import bundled_scenarios, load_scenario
from kvprobe.probes.needle.plan import NeedleSpec
from kvprobe.probes.repetition.probe import RepetitionSpec


def test_bundled_scenarios_load() -> None:
    names = bundled_scenarios()
    assert {"default", "noise", "quick"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        assert scenario.name == name
        assert len(scenario.sha256) == 64


def test_default_scenario_gives_16_items_per_checkpoint_at_1024() -> None:
    s = load_scenario("default")
    assert s.plan.documents * s.spec(NeedleSpec).per_segment >= 16


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[plan]\ndocumnets = 3\n", "plan.documnets"),
        ("[plan]\ndocuments = 'three'\n", "plan.documents"),
        ("[needle]\nquery = 'no placeholder'\n", "needle.query"),
        ("[haystack]\nkind = 'poetry'\n", "haystack.kind"),
        ("colour = 'blue'\n", "colour"),
        ("[plan]\nchunk = 3\n", "plan.chunk"),
    ],
)
def test_bad_scenario_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=f"'{key}'"):
        load_scenario(str(path))


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[plan\n")
    with pytest.raises(UserError) as info:
        load_scenario(str(path))
    assert "\n" not in str(info.value)


def test_unknown_scenario_lists_known() -> None:
    with pytest.raises(UserError, match="default"):
        load_scenario("no-such-scenario")


def test_scenario_hash_changes_with_content(tmp_path: Path) -> None:
    a = tmp_path / "a.toml"
    b = tmp_path / "b.toml"
    a.write_text("name='x'\n[plan]\ndocuments = 2\n")
    b.write_text("name='x'\n[plan]\ndocuments = 3\n")
    assert load_scenario(str(a)).sha256 != load_scenario(str(b)).sha256


def test_the_default_scenario_measures_short_lengths() -> None:
    """From 256 tokens (issue 40): the level of a loss rests on data, not on the first long
    checkpoint; its greedy continuations stay at 1,024 and beyond (the dearest work)."""
    scenario = load_scenario("default")
    plan = scenario.plan
    assert default_checkpoints(8192, plan.checkpoints, plan.first_checkpoint) == [
        256, 512, 1024, 2048, 4096, 8192,
    ]  # fmt: skip
    assert scenario.spec(RepetitionSpec).from_ctx == 1024
    quick = load_scenario("quick").plan
    assert default_checkpoints(4096, quick.checkpoints, quick.first_checkpoint)[0] == 1024
