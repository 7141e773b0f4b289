"""Config-only Qwen3 checkpoints of real sizes, for systems benchmarks on a GPU.

KV and throughput figures depend on the model's shape (layers, KV heads, head
size), not on its weights. SGLang's `--load-format dummy` fills random weights at
load time, so a directory with a config and a tokenizer (the tiny one, whose
Memento and ChatML tokens are single ids) is all a GPU benchmark needs: no model
hub, no 16 GB of random safetensors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from memento_sglang.models.tiny import build_tokenizer


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 128
    vocab_size: int = 151936
    max_position_embeddings: int = 40960


#: Published Qwen3 shapes (config.json of the Qwen/Qwen3-* checkpoints).
SHAPES = {
    "qwen3-0.6b": ModelShape(1024, 3072, 28, 16, 8),
    "qwen3-8b": ModelShape(4096, 12288, 36, 32, 8),
}


def build_model_shell(dest: Path, shape: str | ModelShape) -> Path:
    """Write a tokenizer and a Qwen3 `config.json` of `shape` to `dest` (no weights)."""
    spec = SHAPES[shape] if isinstance(shape, str) else shape
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(dest)
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        **asdict(spec),
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest
