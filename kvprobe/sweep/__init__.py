"""Sweeps: many `kvprobe run` cells (models x caches x contexts x ...) into one folder, run one
after another or as Ray tasks, resumable, merged into one report (`kvprobe report SWEEP_DIR`)."""
