"""The probe registry (kvprobe.api.registry), directly: what is registered and in which order,
what it refuses, and the metric table read through it."""

from __future__ import annotations

from typing import ClassVar

import pytest

from kvprobe.api import (
    POOLED_DIVERGENCE,
    RETRIEVAL,
    Metric,
    Probe,
    all_probes,
    by_name,
    check_mode,
    get_probe,
    margins,
    pooled_metric,
    probe_names,
    register,
    registered,
    selected,
    unregister,
)
from kvprobe.infra.errors import UserError


class Counted(Probe):
    name = "counted"
    modes: ClassVar[tuple[str, ...]] = ("onepass", "classic")

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (Metric("counted", "counted_rate", binary=True, margin=0.1),)


def test_built_in_probes_come_first_in_their_own_order() -> None:
    names = probe_names()
    assert names[:3] == ["needle", "repetition", "divergence"]
    with registered(Counted()):
        assert probe_names() == [*names, "counted"]  # a plug-in after every built-in one
    assert "counted" not in probe_names()  # and gone after the block


def test_a_name_twice_or_a_name_that_is_no_identifier_is_refused() -> None:
    with registered(Counted()), pytest.raises(ValueError, match="registered already"):
        register(Counted())

    class Nameless(Probe):
        name = "not a name"

    with pytest.raises(ValueError, match="identifier"):
        register(Nameless())
    unregister("never-there")  # unregistering what is not there is no error


def test_an_unknown_probe_is_one_line_with_a_near_name() -> None:
    with pytest.raises(UserError, match=r"unknown probe 'neddle' \(did you mean needle\?\)") as err:
        get_probe("neddle")
    assert "\n" not in str(err.value)
    assert get_probe("needle").name == "needle"


def test_selection_keeps_registry_order_and_the_mode() -> None:
    assert [p.name for p in selected(["divergence", "needle"])] == ["needle", "divergence"]
    assert [p.name for p in selected(["needle", "divergence"], "classic")] == ["needle"]
    with pytest.raises(UserError, match="--mode classic applies to the needle probe"):
        check_mode(["divergence"], "classic")
    with registered(Counted()):
        check_mode(["counted"], "classic")  # a plug-in that measures in classic mode is taken


def test_the_metric_table_comes_from_the_registered_probes() -> None:
    assert by_name("accuracy").probe == "needle"
    retrieval = pooled_metric(RETRIEVAL)
    assert retrieval is not None
    assert retrieval.name == "accuracy"
    assert pooled_metric(POOLED_DIVERGENCE) is not None
    with pytest.raises(KeyError):
        by_name("counted_rate")
    with registered(Counted()):
        assert by_name("counted_rate").margin == 0.1
        assert margins()["counted_rate"] == 0.1  # every margin
        assert "counted_rate" not in margins(ran=["needle"])  # only of the probes that ran (and the first)
        assert "counted_rate" in margins(ran=["counted"])
        assert "accuracy" in margins(ran=["counted"])  # the first probes' margins are always listed
    assert all(p.name != "counted" for p in all_probes())
