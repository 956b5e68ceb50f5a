"""The needle probe: its plan, metrics and statistics beside it (probe.py registers it)."""
