"""Benchmarks and calibrations: scripts run by hand, their results under results/bench/."""
