"""Variable tracking: chains of assignments, asked which variables hold a value (RULER vt)."""
