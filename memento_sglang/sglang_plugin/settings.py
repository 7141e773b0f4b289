"""Server-wide Memento settings: the `--memento-config` flag, the Engine kwarg, limits.

The config travels on `ServerArgs` as a bookkeeping attribute (`_memento_config`,
a JSON string), which SGLang pickles into every child process along with the
record; `MEMENTO_SGLANG_CONFIG` is the fallback for launch paths we do not see.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from sglang.srt.environ import envs

from memento_sglang.config import MementoConfig, MementoConfigError
from memento_sglang.constants import (
    MASKING_BACKENDS,
    RADIX_CACHE_BACKEND,
    REASONING_PARSER,
    MementoStartupError,
)
from memento_sglang.cpu import gpu_available
from memento_sglang.resolver import ConfigResolver, server_config_text, tokenizer_encoder, tokenizer_vocab

ATTRIBUTE = "_memento_config"
FLAG = "--memento-config"

GPU_DEFAULT_BACKEND = MASKING_BACKENDS[0]


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


def masking_backend_choice(raw_config: str | None, backends: dict[str, str | None],
                           device: str | None) -> dict[str, str]:  # fmt: skip
    """The attention-backend settings to add before SGLang resolves its defaults.

    `backends` holds the user's `attention_backend` and `prefill_attention_backend`.
    With Memento on server-wide, prefill must run on a backend that masks; decode never
    needs a mask (rows are compacted before every decode step), so the decode backend
    stays the user's or SGLang's default (FA3 on Hopper, `trtllm_mha` on Blackwell) and
    only prefill moves: on a GPU to FlashInfer (Triton on ROCm). A prefill backend
    forced to one that cannot mask stops the launch.
    """
    if not MementoConfig.parse(server_config_text(raw_config)).enable:
        return {}
    forced_prefill = backends.get("prefill_attention_backend")
    prefill = forced_prefill or backends.get("attention_backend")
    if prefill in MASKING_BACKENDS:
        return {}
    on_gpu = device in (None, "cuda") and gpu_available()
    if forced_prefill is None and on_gpu:
        if _is_hip():  # ROCm's decode default (aiter) with Memento is untested: Triton for both
            return {"attention_backend" if prefill is None else "prefill_attention_backend": "triton"}
        return {"prefill_attention_backend": GPU_DEFAULT_BACKEND}
    if prefill is None:
        return {}
    raise MementoStartupError(
        f"the {prefill!r} attention backend has no custom attention mask, which Memento's "
        f"masked prefill needs; use one of {', '.join(MASKING_BACKENDS)} for prefill "
        f"(--prefill-attention-backend, or --attention-backend), or leave it unset"
    )


def radix_cache_choice(raw_config: str | None, cache: dict[str, Any]) -> dict[str, str]:
    """With a Memento config (`--memento-config` or `MEMENTO_SGLANG_CONFIG`), the prefix
    cache defaults to the Memento radix cache (another tree would cache compacted rows
    under their logical ids, and is refused). An explicit `--radix-cache-backend`,
    `--disable-radix-cache` or HiCache wins."""
    if server_config_text(raw_config) is None or any(cache.values()):
        return {}
    return {"radix_cache_backend": RADIX_CACHE_BACKEND}


def reasoning_parser_choice(raw_config: str | None, current: str | None) -> dict[str, str]:
    """With `--memento-config` given, chat splits reasoning with the `memento` parser
    (delimiters kept, `mementos` added); an explicit `--reasoning-parser` wins."""
    if raw_config is None or current:
        return {}
    return {"reasoning_parser": REASONING_PARSER}


def server_config(server_args: Any) -> MementoConfig:
    return MementoConfig.parse(server_config_text(getattr(server_args, ATTRIBUTE, None)))


def unsupported_reason(server_args: Any, model_config: Any = None) -> str | None:
    """Why this server cannot run Memento at all (None when it can)."""
    if reason := _paged_kv_reason(server_args):
        return reason
    if server_args.speculative_algorithm:
        return "speculative decoding is not supported with Memento yet"
    if getattr(server_args, "disaggregation_mode", "null") not in ("null", None):
        return "prefill/decode disaggregation is not supported with Memento yet"
    if reason := _untested_mode(server_args) or _prefix_cache_reason(server_args):
        return reason
    if getattr(server_args, "enable_hisparse", False):
        return "HiSparse (--enable-hisparse) moves KV rows that compaction rewrites"
    if prefill_graph_backend(server_args) == "full":
        return (
            "full prefill CUDA graphs (--cuda-graph-backend-prefill full) replay attention plans "
            "that Memento's prefill masks never reach; use another prefill graph backend"
        )
    if _is_hip() and not server_args.disable_overlap_schedule:
        return (
            "on ROCm SGLang's overlap scheduler has no write-after-read barrier, and compaction "
            "rewrites rows the batch in flight reads; add --disable-overlap-schedule"
        )
    return model_unsupported_reason(model_config) if model_config is not None else None


def _paged_kv_reason(server_args: Any) -> str | None:
    """Paged compaction moves token rows of slot-major K/V buffers (checked again on the
    pool itself once it exists): page-major layouts and per-page scales are not such
    buffers, and its KV move waits for the forward in flight on CUDA only."""
    page = server_args.page_size or 1
    if page == 1:
        return None
    if envs.SGLANG_USE_HND_KVCACHE.get():
        return f"--page-size {page} with SGLANG_USE_HND_KVCACHE (page-major KV layout)"
    dtype = str(getattr(server_args, "kv_cache_dtype", "auto"))
    if "fp4" in dtype or dtype.startswith("mx"):
        return f"--page-size {page} with --kv-cache-dtype {dtype} (scales kept per page)"
    device = getattr(server_args, "device", None) or "cuda"
    if device not in ("cuda", "cpu") or (device == "cuda" and _is_hip()):
        where = "ROCm" if device == "cuda" else device
        return f"--page-size {page} on {where}: paged compaction runs on CUDA and CPU"
    return None


def _paged_pool_reason(server_args: Any, kv_allocator: Any) -> str | None:
    if kv_allocator is None or (server_args.page_size or 1) == 1:
        return None
    from memento_sglang.sglang_plugin.paged_compaction import pool_unsupported_reason

    return pool_unsupported_reason(kv_allocator)


def _untested_mode(server_args: Any) -> str | None:
    """Server modes whose interaction with compaction no test covers yet: refused by name."""
    if (getattr(server_args, "pp_size", 1) or 1) > 1:
        return (
            f"--pp-size {server_args.pp_size}: pipeline stages would each compact their own layers "
            "of a row at different steps; use --tp-size or --dp-size"
        )
    attn_dp = getattr(server_args, "attn_dp_size", 1) or 1
    if attn_dp > 1 or getattr(server_args, "enable_dp_attention", False):
        return (
            f"--attn-dp-size {attn_dp} (DP attention): attention ranks hold different requests inside one "
            "tensor-parallel group, and Memento's masks and compaction are planned per scheduler; "
            "use --dp-size without it"
        )
    for name, flag in (("attn_cp_size", "--attn-cp-size"), ("dcp_size", "--dcp-size")):
        if (size := getattr(server_args, name, 1) or 1) > 1:
            return f"{flag} {size}: KV split across ranks by position, which row compaction would break"
    if getattr(server_args, "enable_lora", False) or getattr(server_args, "lora_paths", None):
        return "LoRA adapters (--enable-lora, --lora-paths) key the prefix cache by adapter"
    if getattr(server_args, "enable_hierarchical_cache", False):
        return "HiCache (--enable-hierarchical-cache) copies KV rows to host memory that compaction rewrites"
    if getattr(server_args, "enable_deterministic_inference", False):
        return "--enable-deterministic-inference aligns prefill chunks, which Memento's masked chunks do not"
    if getattr(server_args, "enable_mixed_chunk", False):
        return "--enable-mixed-chunk runs decode rows inside prefill batches, where rows are not compacted"
    return None


def _prefix_cache_reason(server_args: Any) -> str | None:
    """Memento rows are cached by the Memento radix cache, or not at all."""
    backend = getattr(server_args, "radix_cache_backend", None)
    if getattr(server_args, "disable_radix_cache", False) or backend == RADIX_CACHE_BACKEND:
        return None
    return (
        f"the prefix cache is {backend or 'SGLang default radix tree'}; Memento needs "
        f"--radix-cache-backend {RADIX_CACHE_BACKEND} (the default with --memento-config) "
        "or --disable-radix-cache"
    )


def model_unsupported_reason(model_config: Any) -> str | None:
    """Model features whose KV is not one slot per logical token at its position."""
    if getattr(model_config, "is_hybrid_swa", False):
        return (
            "hybrid sliding-window models keep a second KV pool that frees slots by logical "
            "length, which a compacted row no longer has"
        )
    if _uses_ssm_state(model_config):
        return "hybrid Mamba/linear-attention models keep a recurrent state that an evicted block stays in"
    if getattr(model_config, "model_is_mrope", False):
        return (
            "multimodal-RoPE models (mrope_section) rotate with mrope_positions, which Memento "
            "does not keep logical; serve the text model (--language-model-only) if it has one"
        )
    return None


def prefill_graph_backend(server_args: Any) -> str | None:
    """The resolved prefill CUDA-graph backend (SGLang folds the flags into cuda_graph_config)."""
    config = getattr(server_args, "cuda_graph_config", None)
    prefill = config.get("prefill") if isinstance(config, dict) else getattr(config, "prefill", None)
    backend = prefill.get("backend") if isinstance(prefill, dict) else getattr(prefill, "backend", None)
    backend = backend or getattr(server_args, "cuda_graph_backend_prefill", None)
    return None if backend is None else str(getattr(backend, "value", backend)).lower()


def _is_hip() -> bool:
    import torch

    return bool(torch.version.hip)


def _uses_ssm_state(model_config: Any) -> bool:
    if getattr(model_config, "hf_config", None) is None:
        return False
    from sglang.srt.mem_cache.kv_cache_builder import uses_ssm_state

    try:
        return bool(uses_ssm_state(model_config))
    except (AttributeError, TypeError, ValueError):  # a config SGLang's helper cannot read
        return False


def check_prefill_masking(server_spec: Any, masked_prefill: bool) -> None:
    """With Memento on server-wide, a prefill backend SGLang resolved to one that cannot
    mask (an MLA backend, FlashInfer's sliding-window wrappers) keeps prompt blocks visible:
    said at startup, and `restart_mode`, which needs the mask, refuses to start."""
    if server_spec is None or masked_prefill:
        return
    if server_spec.config.restart_mode:
        raise MementoStartupError(
            "restart_mode needs a prefill attention backend that can mask; this model's resolved "
            f"backend cannot (use one of {', '.join(MASKING_BACKENDS)})"
        )
    logging.getLogger("memento_sglang").warning(
        "memento-sglang: this prefill attention backend cannot apply Memento masks; closed blocks "
        "inside prompts stay visible (decode-time eviction still works)"
    )


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


def make_resolver(
    server_args: Any, tokenizer: Any, vocab_size: int, model_config: Any = None, *, kv_allocator: Any = None
) -> ConfigResolver:
    """The scheduler's resolver; `kv_allocator` (the scheduler's, once its KV pool exists)
    is checked for paged compaction when pages are on."""
    budget_reason = None
    if not delayed_sampling_on(server_args):
        budget_reason = (
            "the overlap scheduler samples ahead of result processing; enable Memento "
            "server-wide (--memento-config), set SGLANG_ENABLE_DELAY_SAMPLE=1, or use "
            "--disable-overlap-schedule"
        )
    prefill = server_args.prefill_attention_backend or server_args.attention_backend
    restart_reason = None  # an unset backend is checked on the resolved one, in the scheduler
    if prefill is not None and prefill not in MASKING_BACKENDS:
        restart_reason = f"the {prefill!r} prefill attention backend cannot recompute a memento masked"
    elif server_args.enable_mixed_chunk:
        restart_reason = "--enable-mixed-chunk decodes without SGLang's retraction point"
    return ConfigResolver(
        server_config(server_args),
        tokenizer_vocab(tokenizer),
        vocab_size,
        encode=tokenizer_encoder(tokenizer),
        unsupported_reason=unsupported_reason(server_args, model_config)
        or _paged_pool_reason(server_args, kv_allocator),
        block_budget_unsupported_reason=budget_reason,
        restart_unsupported_reason=restart_reason,
    )
