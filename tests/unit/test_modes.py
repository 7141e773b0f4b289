"""SGLang modes Memento cannot follow are refused at startup, naming the flag or feature."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.server_args import ServerArgs

from memento_sglang.config import MementoConfig, MementoConfigError
from memento_sglang.models.tiny import tiny_model_path
from memento_sglang.resolver import ConfigResolver
from memento_sglang.sglang_plugin import settings
from memento_sglang.sglang_plugin.request_state import refused_mode


def server_args(**overrides) -> SimpleNamespace:
    base = dict(
        page_size=1,
        speculative_algorithm=None,
        disaggregation_mode="null",
        disable_overlap_schedule=False,
        radix_cache_backend="memento",
        cuda_graph_config={"prefill": {"backend": "disabled"}, "decode": {"backend": "disabled"}},
    )
    return SimpleNamespace(**{**base, **overrides})


def test_the_cpu_server_shape_is_supported():
    assert settings.unsupported_reason(server_args()) is None


@pytest.mark.parametrize(
    "flags, named",
    [
        ({"dp_size": 4, "pp_size": 2}, "--pp-size 2"),
        ({"dp_size": 2, "enable_dp_attention": True}, "DP attention"),
        ({"tp_size": 2, "attn_dp_size": 2}, "--attn-dp-size 2"),
        ({"tp_size": 2, "attn_cp_size": 2}, "--attn-cp-size 2"),
        ({"tp_size": 2, "dcp_size": 2}, "--dcp-size 2"),
        ({"enable_lora": True}, "--enable-lora"),
        ({"lora_paths": ["adapter=/tmp/a"]}, "--lora-paths"),
        ({"enable_hierarchical_cache": True}, "--enable-hierarchical-cache"),
        ({"enable_mixed_chunk": True}, "--enable-mixed-chunk"),
        ({"enable_deterministic_inference": True}, "--enable-deterministic-inference"),
    ],
)
def test_untested_modes_are_refused_by_flag(flags, named):
    assert named in settings.unsupported_reason(server_args(**flags))
    assert settings.unsupported_reason(server_args(tp_size=1, dp_size=1, lora_paths=None)) is None


@pytest.mark.parametrize("page_size", [16, 64])
def test_paged_kv_is_supported_in_slot_major_layouts(page_size, monkeypatch):
    assert settings.unsupported_reason(server_args(page_size=page_size)) is None
    for dtype in ("nvfp4", "mxfp8"):
        assert f"--kv-cache-dtype {dtype}" in settings.unsupported_reason(
            server_args(page_size=page_size, kv_cache_dtype=dtype)
        )
    assert "on npu" in settings.unsupported_reason(server_args(page_size=page_size, device="npu"))
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert "on ROCm" in settings.unsupported_reason(
        server_args(page_size=page_size, disable_overlap_schedule=True)
    )
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setenv("SGLANG_USE_HND_KVCACHE", "1")
    assert "SGLANG_USE_HND_KVCACHE" in settings.unsupported_reason(server_args(page_size=page_size))
    assert settings.unsupported_reason(server_args(page_size=1)) is None  # page size 1 moves no KV


def test_tensor_and_data_parallel_are_supported():
    assert settings.unsupported_reason(server_args(tp_size=2, dp_size=2, pp_size=1)) is None


def test_a_prefix_cache_other_than_mementos_is_refused():
    """SGLang's own tree (no --memento-config) or another backend would cache compacted rows
    under their logical ids; Memento runs on its radix cache or with none."""
    default_tree = server_args(radix_cache_backend=None)
    assert "--radix-cache-backend memento" in settings.unsupported_reason(default_tree)
    assert "flexkv" in settings.unsupported_reason(server_args(radix_cache_backend="flexkv"))
    no_cache = server_args(radix_cache_backend=None, disable_radix_cache=True)
    assert settings.unsupported_reason(no_cache) is None


def test_full_prefill_graphs_are_refused():
    args = server_args(cuda_graph_config={"prefill": {"backend": "full"}})
    assert "--cuda-graph-backend-prefill full" in settings.unsupported_reason(args)


def test_rocm_overlap_scheduler_is_refused(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert "--disable-overlap-schedule" in settings.unsupported_reason(server_args())
    assert settings.unsupported_reason(server_args(disable_overlap_schedule=True)) is None


@pytest.mark.parametrize(
    "model, feature",
    [
        (SimpleNamespace(is_hybrid_swa=True), "sliding-window"),
        (SimpleNamespace(model_is_mrope=True), "mrope_positions"),
    ],
)
def test_model_features_are_refused(model, feature):
    assert feature in settings.unsupported_reason(server_args(), model)


def test_a_hybrid_mamba_config_is_refused_through_sglangs_own_detection(tmp_path):
    """A tiny Qwen3-Next style config (GDN linear attention + full attention layers)."""
    import json

    config = json.loads((tiny_model_path() / "config.json").read_text())
    config.update(
        architectures=["Qwen3NextForCausalLM"],
        model_type="qwen3_next",
        layer_types=["linear_attention", "full_attention"],
        full_attention_interval=2,
        linear_num_value_heads=2,
        linear_num_key_heads=2,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
        num_experts=0,
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    try:
        model = ModelConfig(str(tmp_path))
    except Exception as exc:  # noqa: BLE001 - this SGLang cannot read the shell: say so
        pytest.skip(f"SGLang cannot build a Qwen3-Next config here: {exc}")
    reason = settings.model_unsupported_reason(model)
    assert reason is not None and "Mamba" in reason


def test_the_tiny_model_is_supported():
    assert settings.model_unsupported_reason(ModelConfig(str(tiny_model_path()))) is None


def test_refusal_reaches_server_config_and_requests():
    reason = settings.unsupported_reason(server_args(), SimpleNamespace(is_hybrid_swa=True))
    on = MementoConfig(enable=True, mask_delimiters=False)
    with pytest.raises(MementoConfigError, match="sliding-window"):
        ConfigResolver(on, {}, 100, unsupported_reason=reason)
    off = ConfigResolver(MementoConfig(), {}, 100, unsupported_reason=reason)
    with pytest.raises(MementoConfigError, match="sliding-window"):
        off.spec_for({"memento": {"enable": True, "mask_delimiters": False}})


def test_beam_search_is_a_refused_request_mode():
    assert refused_mode(SimpleNamespace(beam_width=None)) is None
    assert refused_mode(SimpleNamespace(beam_width=1)) is None
    assert "beam_width=4" in refused_mode(SimpleNamespace(beam_width=4))


@pytest.mark.parametrize("kind", ["structural_tag", "ebnf"])
def test_the_memento_structure_needs_a_token_exact_grammar_backend(kind):
    params = SimpleNamespace(beam_width=1, structural_tag=None, ebnf=None, json_schema=None, regex=None)
    setattr(params, kind, "{...}")
    for backend in ("xgrammar", "llguidance"):
        assert refused_mode(params, backend) is None
    reason = refused_mode(params, "outlines")
    assert kind in reason and "xgrammar or llguidance" in reason and "outlines" in reason
    assert "need a grammar backend" in refused_mode(params, "none")
    assert refused_mode(params, None) is None  # the flag left at SGLang's default (xgrammar)
    json_only = SimpleNamespace(beam_width=1, structural_tag=None, ebnf=None, json_schema="{}", regex=None)
    assert refused_mode(json_only, "outlines") is None


def test_real_server_args_expose_the_prefill_graph_backend():
    args = ServerArgs(model_path=str(tiny_model_path()), device="cpu")
    assert settings.prefill_graph_backend(args) in (None, "disabled", "breakable", "full", "piecewise")


def test_restart_mode_without_a_masking_prefill_refuses_to_start():
    on = MementoConfig(enable=True, mask_delimiters=False, restart_mode=True).resolve(
        {"<|block_start|>": 1, "<|block_end|>": 2, "<|summary_start|>": 3, "<|summary_end|>": 4,
         "</think>": 5, "<|im_start|>": 6, "assistant": 7}, 100
    )  # fmt: skip
    with pytest.raises(settings.MementoStartupError, match="restart_mode"):
        settings.check_prefill_masking(on, masked_prefill=False)
    settings.check_prefill_masking(on, masked_prefill=True)
    settings.check_prefill_masking(None, masked_prefill=False)  # Memento per request only


def test_no_mask_is_staged_for_a_backend_that_cannot_mask():
    """After a retraction, the re-prefill of a row on such a backend gets no mask (a window
    wrapper's trimmed keys would misalign it)."""
    from memento_sglang.sequence import MementoSequence
    from memento_sglang.sglang_plugin.forward import extend_plans
    from memento_sglang.sglang_plugin.request_state import STATE
    from tests.support.synthetic import spec, tokens

    def batch_of(masked: bool) -> SimpleNamespace:
        seq = MementoSequence(spec(mask_delimiters=False), tokens("A"), evict_prompt_blocks=masked)
        seq.on_output_tokens(tokens("[ w ] ( s ) w"))
        seq.on_row_released()  # retracted: the whole row is prefilled again
        assert seq.has_due()
        req = SimpleNamespace(**{STATE: seq, "rid": "r"})
        return SimpleNamespace(reqs=[req], prefix_lens=[0], extend_lens=[seq.total_len])

    assert extend_plans(batch_of(masked=True))
    assert extend_plans(batch_of(masked=False)) == {}
