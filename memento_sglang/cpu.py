"""Running SGLang's real server on a machine without a GPU, with no manual recipe.

SGLang 0.5.23 serves a dense model on CPU with its CPU engine, `torch_native`
attention, no CUDA graphs and float32, provided the CUDA-only `sgl_kernel`
package (which cannot load without libcuda) is replaced by a stand-in. On a GPU
none of this applies.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

from memento_sglang.constants import CPU_ATTENTION_BACKEND

STAND_IN_DIR = Path(__file__).resolve().parent / "_cpu_stubs"

#: Flags added when absent (flag, value or None for a switch).
CPU_SERVER_DEFAULTS: tuple[tuple[str, str | None], ...] = (
    ("--device", "cpu"),
    ("--attention-backend", CPU_ATTENTION_BACKEND),
    ("--disable-cuda-graph", None),
    ("--dtype", "float32"),
    # SGLang's scheduler polls when idle; on a few CPU cores that steals a core per server.
    ("--sleep-on-idle", None),
)


@cache
def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for an SGLang process on CPU: CPU engine + sgl_kernel stand-in first."""
    env = dict(os.environ if base is None else base)
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    paths = [str(STAND_IN_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def apply_cpu_environment() -> None:
    """Make this process (and the children it spawns) CPU-ready; before importing sglang."""
    if "sgl_kernel" in sys.modules and not hasattr(sys.modules["sgl_kernel"], "_MissingKernel"):
        raise RuntimeError("apply_cpu_environment() must run before sgl_kernel is imported")
    os.environ.update(cpu_environment())
    if str(STAND_IN_DIR) not in sys.path:
        sys.path.insert(0, str(STAND_IN_DIR))


def with_cpu_defaults(argv: Sequence[str]) -> list[str]:
    """`argv` plus the CPU flags the user did not set (theirs always win)."""
    out = list(argv)
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    for flag, value in CPU_SERVER_DEFAULTS:
        if flag not in given:
            out += [flag] if value is None else [flag, value]
    return out
