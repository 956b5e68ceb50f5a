"""The built-in probes, one folder each; importing this package registers them (the registry,
kvprobe.api.registry, imports it by name when it first needs the probes; `Probe.order` sets
their order). Nothing else in kvprobe imports a probe: every stage goes through the contract in
kvprobe.api."""
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
