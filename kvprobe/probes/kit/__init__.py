"""Shared parts of the question probes: asking planted facts back, their rows, tables and schema."""
