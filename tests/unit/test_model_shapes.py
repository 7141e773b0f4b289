"""Config-only model shells for the GPU recipe: real Qwen3 shapes, Memento tokens."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, AutoTokenizer

from memento_sglang.cli import main as cli
from memento_sglang.models.shapes import SHAPES, build_model_shell
from memento_sglang.models.tiny import MEMENTO_TOKENS


def test_qwen3_8b_shell_has_the_published_shape(tmp_path):
    build_model_shell(tmp_path, "qwen3-8b")
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == "qwen3"
    shape = (config.num_hidden_layers, config.num_key_value_heads, config.head_dim, config.hidden_size)
    assert shape == (36, 8, 128, 4096)
    # bf16 KV per token (K and V, 2 bytes each): the README's 144 KiB
    kv_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 2
    assert kv_bytes == 144 * 1024
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for token in MEMENTO_TOKENS:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1
    assert not list(tmp_path.glob("*.safetensors"))  # weights come from --load-format dummy


def test_cli_builds_a_shell_and_refuses_unknown_shapes(tmp_path, capsys):
    cli(["model-shell", "qwen3-0.6b", str(tmp_path / "shell")])
    assert json.loads((tmp_path / "shell" / "config.json").read_text())["num_hidden_layers"] == 28
    assert capsys.readouterr().out.strip().endswith("shell")
    with pytest.raises(SystemExit, match="qwen3-8b"):
        cli(["model-shell", "gpt-5", str(tmp_path / "x")])
    assert set(SHAPES) >= {"qwen3-0.6b", "qwen3-8b"}
