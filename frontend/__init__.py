"""The Memento front end: `@sgl.function` primitives, structural tags, traces.

    import sglang as sgl
    from memento_sglang.frontend import memento_block, memento_reasoning, EngineBackend

Everything here runs in the client process; it reaches SGLang's internals only
through `memento_sglang.sglang_plugin`. The DSL and the engine backend import
SGLang's frontend and engine on first use, so importing a structural tag stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from memento_sglang.frontend.structural_tag import BlockBudget, memento_structural_tag
from memento_sglang.frontend.trace import MalformedTrace, MementoBlock, MementoTrace

if TYPE_CHECKING:
    from memento_sglang.frontend.dsl import memento_block, memento_gen, memento_reasoning
    from memento_sglang.frontend.engine_backend import EngineBackend

_LAZY = {
    "memento_block": "dsl",
    "memento_gen": "dsl",
    "memento_reasoning": "dsl",
    "EngineBackend": "engine_backend",
}

__all__ = [
    "BlockBudget",
    "EngineBackend",
    "MalformedTrace",
    "MementoBlock",
    "MementoTrace",
    "memento_block",
    "memento_gen",
    "memento_reasoning",
    "memento_structural_tag",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
