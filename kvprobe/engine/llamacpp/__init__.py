"""The llama.cpp engine, in this process (llama-cpp-python's low-level API): the one package
that imports `llama_cpp`. It implements `kvprobe.api.engine` and is registered in
`kvprobe.engine.ENGINES` as "llamacpp".

- `log.py`: llama.cpp's log, captured and kept off the terminal, and what it says took effect
  (cache types, flash attention, rotation, weight and KV buffers);
- `model.py`: `Model`, a loaded GGUF file (weights, vocabulary, tokenizer);
- `context.py`: `Context`, one cache configuration (a document sequence plus forks), scoring
  and generation in one fork;
- `forks.py`: lockstep feeding of several contexts, fork groups, packing, parallel greedy
  continuations;
- `kernel_check.py`: whether llama.cpp's extra CPU kernels work on this host (a child process);
- `tools.py`: llama.cpp's KV buffer sizes, its quantizer, its build;
- `engine.py`: `ENGINE`, the object the registry hands out.

Why the low-level API: `Llama` fixes n_seq_max = 1 and, with logits_all, allocates
n_ctx x n_vocab floats up front. Here a context has several sequences on a unified KV cache:
sequence 0 holds the document, sequences 1..k are throw-away forks (a needle query, or parallel
continuations), so a fork shares the document prefix without disturbing it. Logits are read
only at the positions asked for and reduced at once.

This package imports nothing of its own at import time (a child process runs
`python -m kvprobe.engine.llamacpp.kernel_check` without loading the rest twice).
"""
