"""What a run measures, as data, before any model is loaded: scenario files (`scenario`: TOML
into a `Scenario`, every key checked by kvprobe.infra.toml_check, each probe's section found
through the registry), the haystack text (`haystack`), the documents with the probes' spans
planted (`documents`), the prompt's form, raw or chat (`prompt`, `chat`), and the groups of
configurations that share the memory (`groups`). Pure functions of the scenario and a tokenizer.
It imports only the floors below it (kvprobe.api, kvprobe.infra); the engine and the weights
share its floor and it names neither."""
