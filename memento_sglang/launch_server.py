"""`python -m memento_sglang.launch_server`: SGLang's launcher with CPU defaults.

Same arguments as `python -m sglang.launch_server` (plus `--memento-config`, which
the plugin adds to every SGLang command line). Without a GPU it applies the CPU
defaults of `memento_sglang.cpu` first, and with several ranks (`--tp-size`,
`--dp-size`) binds each rank to its own cores (and says so).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from memento_sglang.cpu import (
    apply_cpu_environment,
    gpu_available,
    parallel_environment,
    rank_memory_fraction,
    with_cpu_defaults,
)


def server_argv(argv: Sequence[str]) -> list[str]:
    """The argument list SGLang will see on this machine."""
    return list(argv) if gpu_available() else with_cpu_defaults(argv)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not gpu_available():
        apply_cpu_environment()
    from sglang.launch_server import run_server
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    load_plugins()
    server_args = prepare_server_args(server_argv(argv))
    if not gpu_available():
        _share_the_cpu(server_args)
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)


def _share_the_cpu(server_args: Any) -> None:
    """Several ranks on one CPU machine: cores and memory split between them (said on stderr)."""
    env = parallel_environment(server_args.tp_size, server_args.dp_size, server_args.pp_size)
    for name, value in env.items():
        print(f"memento-sglang: {name}={value} (CPU server with several ranks)", file=sys.stderr)
    os.environ.update(env)
    from sglang.srt.utils.common import get_cpu_ids_by_node

    ranks = server_args.tp_size * server_args.dp_size * server_args.pp_size
    sized = server_args.max_total_tokens is not None or server_args.mem_fraction_static is not None
    fraction = rank_memory_fraction(ranks, len(get_cpu_ids_by_node()) or 1, pool_sized=sized)
    if fraction is not None:
        server_args.mem_fraction_static = fraction
        print(
            f"memento-sglang: --mem-fraction-static {fraction} for each of {ranks} ranks "
            "(set --max-total-tokens to size the KV pools yourself)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
