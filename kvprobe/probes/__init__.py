"""Probes: each one is a module here that registers a Probe (kvprobe.probes.base)."""

from kvprobe.probes.base import Budget, Probe, ProbeRun, Row, RunSetup
from kvprobe.probes.registry import (
    all_probes,
    check_mode,
    get_probe,
    probe_names,
    register,
    registered,
    selected,
    unregister,
)

__all__ = [
    "Budget",
    "Probe",
    "ProbeRun",
    "Row",
    "RunSetup",
    "all_probes",
    "check_mode",
    "get_probe",
    "probe_names",
    "register",
    "registered",
    "selected",
    "unregister",
]
