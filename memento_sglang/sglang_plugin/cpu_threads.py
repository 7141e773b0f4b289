"""Pin a CPU rank's threads to the cores SGLang assigned it.

SGLang gives each rank of a CPU server one `|`-group of `SGLANG_CPU_OMP_THREADS_BIND`
(`numa_utils.init_threads_binding`, by the rank's device id) but applies it only
through `sgl_kernel` on AMX and arm64 hosts (`distributed/bootstrap.py`,
`_init_cpu_threads_env`). Elsewhere every rank runs torch's default thread pool on
every core, and two ranks on two cores fight over both. Here the scheduler process's
threads are pinned to the rank's group and torch uses that many threads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from sglang.srt.distributed import bootstrap
from sglang.srt.runtime_context import get_device

from memento_sglang.cpu import THREADS_BIND_ENV

logger = logging.getLogger(__name__)


def rank_cores(bind: str, device_id: int) -> list[int]:
    """The cores of group `device_id` of a bind string ("0-3,8|4-7" -> group 0: 0-3 and 8)."""
    groups = bind.split("|")
    if not 0 <= device_id < len(groups):
        raise ValueError(f"{THREADS_BIND_ENV}={bind!r} has no group for rank device id {device_id}")
    cores: list[int] = []
    for part in groups[device_id].split(","):
        first, _, last = part.strip().partition("-")
        cores += range(int(first), int(last or first) + 1)
    return cores


def pin_rank_threads(device: str) -> list[int] | None:
    """Pin this process to its rank's cores when SGLang itself did not; returns them."""
    bind = os.environ.get(THREADS_BIND_ENV, "")
    if device != "cpu" or not bind or bootstrap._is_cpu_amx_available or bootstrap._is_cpu_arm64:
        return None
    device_id = get_device().gpu_id  # what SGLang indexes the bind groups by
    try:
        cores = rank_cores(bind, device_id)
        os.sched_setaffinity(0, cores)  # a core that does not exist fails here, once
    except (ValueError, OSError) as exc:  # SGLang itself only logs on such hosts
        logger.warning(
            "memento-sglang: %s=%r not applied to rank %d: %s", THREADS_BIND_ENV, bind, device_id, exc
        )
        return None
    for task in Path("/proc/self/task").iterdir():  # the thread pool already running too
        try:
            os.sched_setaffinity(int(task.name), cores)
        except OSError:  # a thread that just ended
            continue
    torch.set_num_threads(len(set(cores)))
    logger.info("memento-sglang: rank %d pinned to cores %s", device_id, cores)
    return cores
