"""`sgl.Engine` with Memento: plugins loaded first, CPU defaults without a GPU.

`sgl.Engine` loads plugins inside its own `__init__`, too late for the plugin to
accept a `memento_config=` keyword on that first call. `Engine()` here loads them
first; afterwards plain `sgl.Engine(..., memento_config=...)` works as well (so does
the `MEMENTO_SGLANG_CONFIG` environment variable, always).
"""

from __future__ import annotations

import json
from typing import Any

from memento_sglang.config import MementoConfig
from memento_sglang.constants import CPU_ATTENTION_BACKEND
from memento_sglang.cpu import apply_cpu_environment, gpu_available

#: `sgl.Engine` keyword arguments that the CPU defaults set when absent.
CPU_ENGINE_DEFAULTS = {
    "device": "cpu",
    "attention_backend": CPU_ATTENTION_BACKEND,
    "disable_cuda_graph": True,
    "dtype": "float32",
    "sleep_on_idle": True,
}


def Engine(*, memento_config: str | dict | MementoConfig | None = None, **kwargs: Any):  # noqa: N802
    """Create an `sgl.Engine` serving Memento (same keyword arguments, plus `memento_config`)."""
    if not gpu_available():
        apply_cpu_environment()
        kwargs = {**CPU_ENGINE_DEFAULTS, **kwargs}
    import sglang as sgl
    from sglang.srt.plugins import load_plugins

    load_plugins()
    if memento_config is not None:
        config = MementoConfig.parse(memento_config)
        kwargs["memento_config"] = json.dumps(config.model_dump(exclude_unset=True))
    return sgl.Engine(**kwargs)
