"""`EngineBackend`: `@sgl.function` programs on an in-process `sgl.Engine`, no HTTP server.

    engine = memento_sglang.Engine(model_path=..., memento_config=...)
    with EngineBackend(engine) as backend:
        state = solve.run(question=..., backend=backend)

It is SGLang's `RuntimeEndpoint` with its transport swapped for the engine's tokenizer
manager, so it lives with the other SGLang internals in
`memento_sglang/sglang_plugin/engine_backend.py` (see its docstring for threading and
shutdown); this is its place in the front end's public surface.
"""

from __future__ import annotations

from memento_sglang.sglang_plugin.engine_backend import EngineBackend

__all__ = ["EngineBackend"]
