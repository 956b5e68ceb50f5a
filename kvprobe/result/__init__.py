"""The result file, the one interface between running and reporting: the document as a run
assembles it (`document`, `records`), written atomically and read back validated and migrated
(`store`, `check`, `migrations`), its schema generated from the typed models with each probe's
part spliced in (`schema`, `schema_doc`, `blocks`), the per-position arrays (`arrays`,
`exact`), the ties between fields (`ties`) and the run journal that makes a run resumable
(`journal`). It stands above the plan, the weights and the engine, imports only those floors
and below (kvprobe.api, kvprobe.infra), and nothing that reads a result (stats, views)."""
