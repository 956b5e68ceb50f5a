"""`kvprobe run`, as a pipeline in the order it runs: `options` (its command-line section, which
a sweep reads its cells with too), `validate` (every precondition, before any model is hashed
or loaded) makes a typed `request.RunRequest`; `execute` locks the result path, opens the
journal, loads the models through an engine and hands them to `runner`, which feeds every
configuration the same tokens and calls the probes; `pace` predicts unit times (the ETA,
`--time-budget`) and `progress` shows them; `until_decided` stops a configuration once its
decision is known. It imports the contracts (`kvprobe.api`), the plan, the weights' facts, an
engine through its registry, the result, the statistics and the views that show a run;
nothing above it (sweep, cli) is imported here."""
