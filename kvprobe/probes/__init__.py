"""Probes: pure functions from model outputs (token ids, text) to per-item metrics."""
