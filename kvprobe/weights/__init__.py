"""What a model file's header says, without loading the model: `doctor` (the facts, the warnings
and `kvprobe doctor`), a bounded walk of the GGUF header (`gguf_header`), the hyperparameters
(`hparams`), the metadata a result records (`model_info`, kept between runs by `facts`), the
memory a run needs (`memory`), and `kvprobe quantize`'s plan (`quantize`; the command hands
it to the engine). It shares its floor with the plan and the engine and
imports only kvprobe.api and kvprobe.infra."""
