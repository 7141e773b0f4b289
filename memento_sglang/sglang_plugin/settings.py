"""Server-wide Memento settings: the `--memento-config` flag, the Engine kwarg, limits.

The config travels on `ServerArgs` as a bookkeeping attribute (`_memento_config`,
a JSON string), which SGLang pickles into every child process along with the
record; `MEMENTO_SGLANG_CONFIG` is the fallback for launch paths we do not see.
"""

from __future__ import annotations

import argparse
from typing import Any

from sglang.srt.environ import envs

from memento_sglang.config import MementoConfig, MementoConfigError
from memento_sglang.resolver import ConfigResolver, server_config_text, tokenizer_vocab

ATTRIBUTE = "_memento_config"
FLAG = "--memento-config"


def parse_flag(text: str) -> str:
    """argparse `type=`: validate early so a bad flag is a usage error, not a traceback."""
    try:
        return MementoConfig.parse(text).model_dump_json(exclude_unset=True)
    except MementoConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        FLAG,
        type=parse_flag,
        default=None,
        help="Memento KV eviction, as JSON, e.g. "
        '\'{"enable": true, "mask_delimiters": false}\' (memento-sglang plugin).',
    )


def attach(server_args: Any, raw: str | dict | MementoConfig | None) -> None:
    """Store a validated config on a ServerArgs record (bookkeeping, not a field)."""
    if raw is None:
        return
    config = MementoConfig.parse(raw)
    setattr(server_args, ATTRIBUTE, config.model_dump_json(exclude_unset=True))  # bookkeeping name: allowed


def server_config(server_args: Any) -> MementoConfig:
    return MementoConfig.parse(server_config_text(getattr(server_args, ATTRIBUTE, None)))


def unsupported_reason(server_args: Any) -> str | None:
    """Why this server cannot run Memento at all (None when it can)."""
    if (server_args.page_size or 1) != 1:
        return f"page_size={server_args.page_size} (row compaction needs --page-size 1)"
    if server_args.speculative_algorithm:
        return "speculative decoding is not supported with Memento yet"
    if getattr(server_args, "disaggregation_mode", "null") not in ("null", None):
        return "prefill/decode disaggregation is not supported with Memento yet"
    return None


def delayed_sampling_on(server_args: Any) -> bool:
    """Whether a sampled token is processed before the next one is sampled.

    `max_block_tokens` must know whether the previous token closed or continued
    the block; with the overlap scheduler that is only true when sampling is
    delayed, which the plugin switches on whenever Memento is enabled server-wide.
    """
    return (
        server_args.disable_overlap_schedule
        or envs.SGLANG_ENABLE_DELAY_SAMPLE.get()
        or server_config(server_args).enable
    )


def make_resolver(server_args: Any, tokenizer: Any, vocab_size: int) -> ConfigResolver:
    budget_reason = None
    if not delayed_sampling_on(server_args):
        budget_reason = (
            "the overlap scheduler samples ahead of result processing; enable Memento "
            "server-wide (--memento-config), set SGLANG_ENABLE_DELAY_SAMPLE=1, or use "
            "--disable-overlap-schedule"
        )
    return ConfigResolver(
        server_config(server_args),
        tokenizer_vocab(tokenizer),
        vocab_size,
        unsupported_reason=unsupported_reason(server_args),
        block_budget_unsupported_reason=budget_reason,
    )
