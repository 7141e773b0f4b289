"""What several benchmarks share: server options and setup, chat prompts, a server's counters."""

from __future__ import annotations

import re
from pathlib import Path

import requests


def chat_prompts(tokenizer, questions: list[str]) -> list[list[int]]:
    """One single-turn chat prompt (ids, generation prompt added) per question."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for q in questions
    ]


def counter(url: str, name: str) -> float:
    """A Prometheus counter of the server, summed over its label sets."""
    text = requests.get(url + "/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


def add_server_options(parser) -> None:
    """`--model-path` and `--server-args`: the GPU recipe runs the same benchmarks on a
    real-size model shell (`memento-sglang model-shell qwen3-8b DIR`) with
    `--server-args "--load-format dummy"`."""
    parser.add_argument(
        "--model-path", type=Path, default=None, help="model directory (default: the tiny model)"
    )
    parser.add_argument(
        "--server-args", default="", help="extra SGLang flags for every server, as one string"
    )


#: a server with Memento off server-wide (each request opts in, with or without eviction)
#: and the Memento radix cache, which Memento requests need
MEMENTO_PER_REQUEST = ("--memento-config", '{"mask_delimiters": false}')


def server_setup(args) -> tuple[Path, tuple[str, ...]]:
    import shlex

    from memento_sglang.models.tiny import tiny_model_path

    return args.model_path or tiny_model_path(), tuple(shlex.split(args.server_args))


def machine() -> str:
    """What ran the benchmark, for its JSON."""
    import os

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"
