"""Multi-key needles with look-alike distractors (RULER niah_multikey)."""
