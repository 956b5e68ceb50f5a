"""The registry of probes: registering one is the only step that adds a probe to kvprobe."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

from kvprobe.errors import UserError, did_you_mean
from kvprobe.probes.base import Probe

BUILT_IN = ("kvprobe.probes.needle", "kvprobe.probes.repetition", "kvprobe.probes.divergence")
_probes: dict[str, Probe] = {}
_loaded: list[str] = []


def _load_built_in() -> None:
    """Import the built-in probes once (each registers itself); lazily, since they import the
    scenario module, which asks this registry for their sections."""
    if not _loaded:
        _loaded.extend(BUILT_IN)
        for module in BUILT_IN:
            importlib.import_module(module)


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
    _load_built_in()
    register(probe)
    try:
        yield probe
    finally:
        unregister(probe.name)


def all_probes() -> list[Probe]:
    """Every registered probe: the built-in ones in BUILT_IN order (whichever module was
    imported first), then the others in registration order. This order is the order of item
    rows, summary rows and tables, so it must not depend on import order."""
    _load_built_in()
    rank = {module: i for i, module in enumerate(BUILT_IN)}
    registered = list(_probes.values())
    return sorted(registered, key=lambda p: (rank.get(type(p).__module__, len(rank)), registered.index(p)))


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
