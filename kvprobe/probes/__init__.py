"""The built-in probes, one folder each; importing this package registers them (the registry,
kvprobe.api.registry, imports it by name when it first needs the probes; `Probe.order` sets
their order). Nothing else in kvprobe imports a probe: every stage goes through the contract in
kvprobe.api."""

import kvprobe.probes.divergence.probe
import kvprobe.probes.needle.probe
import kvprobe.probes.repetition.probe  # noqa: F401 - registered on import
