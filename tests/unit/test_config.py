"""MementoConfig: strict validation, overrides, resolution against a vocabulary."""

from __future__ import annotations

import pytest

from memento_sglang.config import MementoConfig, MementoConfigError
from memento_sglang.resolver import ConfigResolver
from tests.support.synthetic import VOCAB


def test_defaults_follow_the_reference():
    cfg = MementoConfig()
    assert (cfg.enable, cfg.keep_last_n_blocks, cfg.mask_delimiters) == (False, 0, None)
    assert cfg.compact_on_summary_end and cfg.require_assistant_section
    assert (cfg.keep_last_block_for_answer, cfg.max_block_tokens, cfg.debug) == (False, 0, False)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ('{"enable": true}', "mask_delimiters is required"),
        ('{"keep_last_n_blocks": -2}', "keep_last_n_blocks"),
        ('{"keep_last_n_blocks": "1"}', "keep_last_n_blocks"),
        ('{"keep_last_n_blocks": true}', "keep_last_n_blocks"),
        ('{"max_block_tokens": -1}', "max_block_tokens"),
        ('{"enable": "yes"}', "enable"),
        ('{"kep_last_n_blocks": 1}', "kep_last_n_blocks"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (
            '{"keep_last_n_blocks": 2, "keep_last_block_for_answer": true}',
            "keep_last_block_for_answer",
        ),
        ('{"restart_mode": true, "keep_last_n_blocks": 1}', "restart_mode"),
        ('{"restart_mode": true, "keep_last_block_for_answer": true}', "restart_mode"),
        ('{"prefill_mask_budget": 0}', "prefill_mask_budget"),
        ('{"prefill_mask_budget": 2147483648}', "prefill_mask_budget"),
    ],
)
def test_invalid_configs_name_the_problem(raw, fragment):
    with pytest.raises(MementoConfigError, match=fragment):
        MementoConfig.parse(raw)


def test_overrides_validate_the_merged_config():
    server = MementoConfig.parse({"enable": True, "mask_delimiters": False})
    assert server.with_overrides({"keep_last_n_blocks": 3}).keep_last_n_blocks == 3
    with pytest.raises(MementoConfigError):
        server.with_overrides({"mask_delimiters": None})
    off = MementoConfig()
    with pytest.raises(MementoConfigError, match="mask_delimiters"):
        off.with_overrides({"enable": True})


def test_the_mask_budget_is_server_wide():
    server = MementoConfig.parse({"enable": True, "mask_delimiters": False, "prefill_mask_budget": 4096})
    assert server.prefill_mask_budget == 4096 and MementoConfig().prefill_mask_budget == 1 << 28
    with pytest.raises(MementoConfigError, match="prefill_mask_budget is server-wide"):
        server.with_overrides({"prefill_mask_budget": (1 << 31) - 1})


def test_resolution_requires_every_token():
    cfg = MementoConfig.parse({"enable": True, "mask_delimiters": True})
    ids = cfg.resolve(VOCAB, 100).ids
    assert ids.block_start == VOCAB["<|block_start|>"] and ids.assistant == (VOCAB["assistant"],)
    with pytest.raises(MementoConfigError, match="im_start_token"):
        cfg.resolve({k: v for k, v in VOCAB.items() if k != "<|im_start|>"}, 100)
    relaxed = MementoConfig.parse(
        {"enable": True, "mask_delimiters": True, "require_assistant_section": False}
    )
    assert relaxed.resolve({k: v for k, v in VOCAB.items() if k != "<|im_start|>"}, 100)
    with pytest.raises(MementoConfigError, match="distinct"):
        MementoConfig.parse(
            {"enable": True, "mask_delimiters": True, "block_end_token": "<|block_start|>"}
        ).resolve(VOCAB, 100)
    with pytest.raises(MementoConfigError, match="outside the vocabulary"):
        MementoConfig.parse({"block_start_token": 100}).resolve(VOCAB, 100)


def test_resolver_per_request():
    server = MementoConfig.parse({"enable": True, "mask_delimiters": False})
    resolver = ConfigResolver(server, VOCAB, 100)
    assert resolver.spec_for(None) is resolver.server_spec
    assert resolver.spec_for({"memento": {"enable": False}}) is None
    assert resolver.spec_for({"memento": {"keep_last_n_blocks": 2}}).config.keep_last_n_blocks == 2
    with pytest.raises(MementoConfigError):
        resolver.spec_for({"memento": {"max_block_tokens": "3"}})
    budgetless = ConfigResolver(server, VOCAB, 100, block_budget_unsupported_reason="overlap")
    with pytest.raises(MementoConfigError, match="max_block_tokens is not available"):
        budgetless.spec_for({"memento": {"max_block_tokens": 3}})
    with pytest.raises(MementoConfigError, match="cannot run"):
        ConfigResolver(server, VOCAB, 100, unsupported_reason="page_size=16")


def test_a_role_the_tokenizer_splits_resolves_to_its_pieces():
    """SmolLM2 writes "assistant" as "ass" + "istant": the default config serves it."""
    from transformers import AutoTokenizer

    from memento_sglang.models.smollm2 import smollm2_model_path
    from memento_sglang.resolver import tokenizer_encoder

    tokenizer = AutoTokenizer.from_pretrained(smollm2_model_path())
    cfg = MementoConfig(enable=True, mask_delimiters=False)
    ids = cfg.resolve(tokenizer.get_vocab(), len(tokenizer), tokenizer_encoder(tokenizer)).ids
    assert tokenizer.convert_ids_to_tokens(list(ids.assistant)) == ["ass", "istant"]
    with pytest.raises(MementoConfigError, match="assistant_token"):
        cfg.resolve(tokenizer.get_vocab(), len(tokenizer))  # no tokenizer: one token or nothing


@pytest.mark.parametrize(
    "role, fragment",
    [([], "empty list"), (["assistant", "<|nope|>"], "'<|nope|>'"), ([5000], "5000")],
)
def test_bad_role_lists_name_the_entry(role, fragment):
    cfg = MementoConfig.parse({"enable": True, "mask_delimiters": False, "assistant_token": role})
    with pytest.raises(MementoConfigError, match=fragment):
        cfg.resolve(VOCAB, 100)
