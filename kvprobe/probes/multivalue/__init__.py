"""Multi-value needles: one key, several values, all asked for (RULER niah_multivalue)."""
