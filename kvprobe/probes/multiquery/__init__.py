"""Multi-query needles: one question names several keys (RULER niah_multiquery)."""
