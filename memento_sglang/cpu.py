"""Running SGLang's real server on a machine without a GPU, with no manual recipe.

SGLang 0.5.23 serves a dense model on CPU with its CPU engine, `torch_native`
attention, no CUDA graphs and float32, provided the CUDA-only `sgl_kernel`
package (which cannot load without libcuda) is replaced by a stand-in. With several
ranks (`--tp-size`, `--dp-size`) each rank needs its own cores
(`SGLANG_CPU_OMP_THREADS_BIND`, else SGLang allows one rank per NUMA node), and
tensor parallel must not pick NCCL (the CUDA build of torch ships it; on CPU the
ranks talk over gloo). On a GPU none of this applies.
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


#: SGLang's per-rank core sets: one `|`-separated group per rank (dp * tp * pp ranks).
THREADS_BIND_ENV = "SGLANG_CPU_OMP_THREADS_BIND"
#: Where SGLang loads NCCL from; a path with no library makes its PyNccl stand down.
NCCL_PATH_ENV = "SGLANG_NCCL_SO_PATH"
NO_NCCL = "/nonexistent/memento-sglang-cpu/libnccl.so.2"


def core_groups(ranks: int, cores: Sequence[int]) -> str:
    """`ranks` core sets in SGLang's bind format ("0-3|4-7"): the cores split into
    contiguous, nearly equal groups; with more ranks than cores, ranks share cores."""
    if ranks < 1 or not cores:
        raise ValueError(f"need at least one rank and one core, got {ranks} ranks, cores {list(cores)}")
    ordered = sorted(cores)
    if ranks >= len(ordered):
        return "|".join(str(ordered[r % len(ordered)]) for r in range(ranks))
    groups = []
    for r in range(ranks):
        part = ordered[r * len(ordered) // ranks : (r + 1) * len(ordered) // ranks]
        groups.append(",".join(_ranges(part)))
    return "|".join(groups)


def _ranges(cores: list[int]) -> list[str]:
    """Sorted core ids as ranges: [0, 1, 2, 5] -> ["0-2", "5"]."""
    out: list[str] = []
    start = prev = cores[0]
    for core in [*cores[1:], None]:
        if core is not None and core == prev + 1:
            prev = core
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if core is not None:
            start = prev = core
    return out


def parallel_environment(
    tp_size: int, dp_size: int, pp_size: int, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What a CPU server with several ranks needs in its environment (the user's own
    settings win): a core set per rank, and no NCCL for tensor parallel."""
    env = os.environ if env is None else env
    ranks = max(1, tp_size) * max(1, dp_size) * max(1, pp_size)
    out: dict[str, str] = {}
    if ranks > 1 and not env.get(THREADS_BIND_ENV):
        out[THREADS_BIND_ENV] = core_groups(ranks, sorted(os.sched_getaffinity(0)))
    if tp_size > 1 and not env.get(NCCL_PATH_ENV):
        out[NCCL_PATH_ENV] = NO_NCCL
    return out


#: The share of free memory all ranks of a CPU server fill with KV together (one rank
#: alone takes SGLang's 0.95; each rank process also needs about a gigabyte of its own).
RANKS_MEMORY_SHARE = 0.8


def rank_memory_fraction(ranks: int, numa_nodes: int, *, pool_sized: bool) -> float | None:
    """`--mem-fraction-static` for each of `ranks` CPU ranks sharing a machine's memory,
    or None when each rank has a NUMA node's memory to itself, or the user sized the
    pool (`pool_sized`: `--max-total-tokens` or `--mem-fraction-static`, from any source).

    Each CPU rank sizes its KV pool from the memory free when it starts (SGLang divides
    it by the NUMA nodes, not by the ranks), so with the default fraction the first
    rank takes nearly all of it and the next one runs out.
    """
    per_node = ranks / max(1, numa_nodes)
    if per_node <= 1 or pool_sized:
        return None
    return round(RANKS_MEMORY_SHARE / per_node, 3)


def with_cpu_defaults(argv: Sequence[str]) -> list[str]:
    """`argv` plus the CPU flags the user did not set (theirs always win)."""
    out = list(argv)
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    for flag, value in CPU_SERVER_DEFAULTS:
        if flag not in given:
            out += [flag] if value is None else [flag, value]
    return out
