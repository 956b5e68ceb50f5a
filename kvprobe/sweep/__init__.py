"""`kvprobe sweep`: many `kvprobe run` cells (models x caches x contexts x ...) into one folder,
run one after another or as Ray tasks, resumable, merged into one report (`kvprobe report
SWEEP_DIR`). The sweep file (`spec`, read by kvprobe.infra.toml_check), the cells (`cells`),
each cell checked with `kvprobe run`'s own parser and validation (`preflight`, `identity`:
kvprobe.run.options and kvprobe.run.validate), the manifest (`manifest`, `schema`), one cell's
child process (`cell_run`), the executors (`local`, `ray_executor`), the driver (`drive`,
`progress`) and the report's rows (`collect`, `merge`, `results`). It imports the run pipeline
and everything below it, never the command line above it (kvprobe.cli)."""
