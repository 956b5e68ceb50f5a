"""The built-in probes, one folder each, plug-ins over the stages' helpers: each imports the
contract (kvprobe.api), the plan, the result's schema blocks and the statistics' tests, and
nothing imports a probe: every stage asks the contract. The question probes share `kit/`.
Importing this package registers them (the registry, kvprobe.api.registry, imports it by name
when it first needs the probes; `Probe.order` sets their order). It imports nothing above the
statistics (views, run, sweep, cli)."""
# ruff: noqa: F401 - each registers itself on import

import kvprobe.probes.aggregation.probe
import kvprobe.probes.divergence.probe
import kvprobe.probes.multikey.probe
import kvprobe.probes.multiquery.probe
import kvprobe.probes.multivalue.probe
import kvprobe.probes.nearduplicate.probe
import kvprobe.probes.needle.probe
import kvprobe.probes.repetition.probe
import kvprobe.probes.vartrack.probe
