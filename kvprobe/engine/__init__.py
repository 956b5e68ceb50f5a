"""The engines, by name: what runs the models (the protocol they implement is
`kvprobe.api.engine`). Importing this package is cheap; an engine's own module (llama_cpp
takes seconds to import) loads the first time it is asked for.

An engine is one package under `kvprobe/engine/` whose module holds an object implementing
`kvprobe.api.engine.Engine`, plus one line in `ENGINES` below. Only the modules of that package
import it: everything above asks the registry (`get_engine`), so nothing above the engine
floor names a concrete engine. This package imports only the ground floor (`kvprobe.api`,
`kvprobe.infra`).
"""

from __future__ import annotations

import importlib

from kvprobe.api.engine import Engine, Quantizer
from kvprobe.infra.errors import UserError, did_you_mean

# name -> "module:attribute" of the engine object, imported on first use.
ENGINES: dict[str, str] = {
    "llamacpp": "kvprobe.engine.llamacpp.engine:ENGINE",  # llama.cpp in this process (llama-cpp-python)
    "llama-server": "kvprobe.engine.server.engine:ENGINE",  # a llama-server over HTTP, spawned or attached
}
DEFAULT_ENGINE = "llamacpp"

_loaded: dict[str, Engine] = {}


def engine_names() -> list[str]:
    """The registered engines' names, in registration order."""
    return list(ENGINES)


def get_engine(name: str = DEFAULT_ENGINE) -> Engine:
    """The engine registered as `name`, imported on first use; an unknown name is a one-line
    UserError that offers the near misses."""
    if name not in ENGINES:
        raise UserError(
            f"unknown engine {name!r}{did_you_mean(name, ENGINES)}: choose one of {', '.join(ENGINES)}"
        )
    if name not in _loaded:
        module, _, attribute = ENGINES[name].partition(":")
        found = getattr(importlib.import_module(module), attribute)
        if not isinstance(found, Engine):
            raise TypeError(f"{ENGINES[name]} does not implement kvprobe.api.engine.Engine")
        _loaded[name] = found
    return _loaded[name]


def quantizer(name: str = DEFAULT_ENGINE) -> Quantizer:
    """The engine `name` as a quantizer (`kvprobe quantize`); one line where it cannot quantize."""
    found = get_engine(name)
    if not isinstance(found, Quantizer):
        raise UserError(f"the {name} engine cannot quantize weights; use the {DEFAULT_ENGINE} engine")
    return found


__all__ = ["DEFAULT_ENGINE", "ENGINES", "engine_names", "get_engine", "quantizer"]
