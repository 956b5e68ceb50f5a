"""Near-duplicate needles: near-identical facts, asked for the k-th (MRCR-style)."""
