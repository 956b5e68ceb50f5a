"""The registry of probes, and the metric table they declare.

Probes are found, never named: the built-in ones by importing the `kvprobe.probes` package
(each of its probe folders registers itself), third-party ones through the `kvprobe.probes`
entry-point group, as pytest and lm-evaluation-harness find their plug-ins:

    [project.entry-points."kvprobe.probes"]
    my_probe = "my_package.probe:PROBE"      # a Probe instance (or a class, or a module)
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Collection, Iterator
from importlib.metadata import entry_points

from kvprobe.api.metric import Metric
from kvprobe.api.probe import Probe
from kvprobe.infra.errors import UserError, did_you_mean

ENTRY_POINT_GROUP = "kvprobe.probes"
BUILT_IN_PACKAGE = "kvprobe.probes"
_probes: dict[str, Probe] = {}
_loaded: list[str] = []


def is_built_in(probe: Probe) -> bool:
    return type(probe).__module__.startswith(BUILT_IN_PACKAGE + ".")


def _load() -> None:
    """Find every probe once: built-in ones first, then the entry points in name order."""
    if _loaded:
        return
    _loaded.append(BUILT_IN_PACKAGE)
    importlib.import_module(BUILT_IN_PACKAGE)
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            found = point.load()
        except Exception as exc:  # a broken plug-in must not stop kvprobe: say which, and why
            raise UserError(
                f"the probe plug-in {point.name!r} ({point.value}) does not load: "
                f"{type(exc).__name__}: {exc}; fix or uninstall its package"
            ) from None
        probe = found() if isinstance(found, type) else found
        if isinstance(probe, Probe) and probe.name not in _probes:
            register(probe)  # a module that registered itself on import leaves nothing to add


def register(probe: Probe) -> Probe:
    if not getattr(probe, "name", "") or not probe.name.isidentifier():
        raise ValueError(f"a probe needs a name that is an identifier, got {getattr(probe, 'name', None)!r}")
    if probe.name in _probes:
        raise ValueError(f"probe {probe.name!r} is registered already")
    _probes[probe.name] = probe
    return probe


def unregister(name: str) -> None:
    _probes.pop(name, None)


@contextlib.contextmanager
def registered(probe: Probe) -> Iterator[Probe]:
    """`probe` registered for the duration of a `with` block (plug-ins under test)."""
    _load()
    register(probe)
    try:
        yield probe
    finally:
        unregister(probe.name)


def all_probes() -> list[Probe]:
    """Every registered probe: the built-in ones in the order their package imports them
    (whichever was imported first), then the others in registration order. This order is the
    order of item rows, summary rows and tables, so it must not depend on import order."""
    _load()
    registered_now = list(_probes.values())
    built_in = [p for p in registered_now if is_built_in(p)]
    rank = {p.name: i for i, p in enumerate(sorted(built_in, key=lambda p: p.order))}
    return sorted(registered_now, key=lambda p: (rank.get(p.name, len(rank)), registered_now.index(p)))


def probe_names() -> list[str]:
    return [p.name for p in all_probes()]


def get_probe(name: str) -> Probe:
    """The probe called `name`, or a one-line UserError with the names there are."""
    probes = {p.name: p for p in all_probes()}
    if name not in probes:
        raise UserError(
            f"unknown probe {name!r}{did_you_mean(str(name), probes)} (known: {', '.join(probes)})"
        )
    return probes[name]


def selected(names: list[str], mode: str | None = None) -> list[Probe]:
    """The registered probes among `names` in registration order (the order their rows take),
    only those that measure in `mode` if it is given."""
    return [p for p in all_probes() if p.name in names and (mode is None or mode in p.modes)]


def check_mode(names: list[str], mode: str) -> None:
    """Refuse a mode in which none of the scenario's probes measures."""
    if not selected(names, mode):
        owners = [p.name for p in all_probes() if mode in p.modes]
        raise UserError(f"--mode {mode} applies to the {' and '.join(owners)} probe: this scenario has none")


# --- the metric table ----------------------------------------------------------------------------


def metric_table() -> tuple[Metric, ...]:
    """The metrics of every registered probe, in registration order."""
    return tuple(m for p in all_probes() for m in p.metrics)


def by_name(name: str) -> Metric:
    found = {m.name: m for m in metric_table()}
    if name not in found:
        raise KeyError(f"no metric {name!r}")
    return found[name]


def paired_item_metrics() -> tuple[Metric, ...]:
    return tuple(m for m in metric_table() if m.field is not None)


def compared_metrics() -> tuple[str, ...]:
    return tuple(m.name for m in metric_table() if m.compared)


def margins(ran: Collection[str] | None = None) -> dict[str, float]:
    """The default equivalence margin of every metric that has one; with `ran`, only of the
    metrics of those probes and of the first ones (`Probe.hashed_always`), which every verdict
    has always listed."""
    always = {p.name for p in all_probes() if p.hashed_always}
    return {
        m.name: m.margin
        for m in metric_table()
        if m.margin is not None and (ran is None or m.probe in always or m.probe in ran)
    }


def lower_is_worse(name: str) -> bool:
    direction = by_name(name).lower_is_worse
    if direction is None:
        raise KeyError(f"metric {name} has no direction")
    return direction


def pooled_metric(role: str) -> Metric | None:
    """The metric that plays `role` in the verdict (kvprobe.api.metric.ROLES), if a registered
    probe declares one."""
    return next((m for m in metric_table() if m.role == role), None)
