"""A tiny Qwen3 with Memento tokens, built locally (no model hub) and cached on disk.

Tests and the CPU demo need a model SGLang serves as-is: Qwen3 architecture, a
tokenizer in which the Memento delimiters and the ChatML markers are single special
tokens, a ChatML chat template, and weights whose greedy output depends on the
context (a default small-std init is degenerate: it emits one token whatever the
prompt, which would make an attention-mask oracle meaningless).
"""

from __future__ import annotations

import json
from pathlib import Path

from memento_sglang.models.cache import default_cache_dir, publish_atomically
from memento_sglang.models.chat_template import MEMENTO_CHAT_TEMPLATE

#: Bump when anything below changes the files produced.
RECIPE_VERSION = 2

MEMENTO_TOKENS = (
    "<think>",
    "</think>",
    "<|block_start|>",
    "<|block_end|>",
    "<|summary_start|>",
    "<|summary_end|>",
)
CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SPECIAL_TOKENS = CHATML_TOKENS + MEMENTO_TOKENS
ROLE_WORDS = ("system", "user", "assistant")


_CORPUS = """
The model thinks in blocks and writes a short summary after each block.
A memento keeps the result of a block: numbers, formulas, the next step.
Let x be the number of apples. Then 3x + 5 = 20, so x = 5.
We check the answer: 3 * 5 + 5 = 20. The answer is 5.
Alice has 12 marbles and gives 4 to Bob; she keeps 8 marbles.
Compute the sum 17 + 25 = 42, then the product 6 * 7 = 42.
First we list the cases, then we count each case, then we add them up.
The triangle has sides 3, 4 and 5, so it is a right triangle with area 6.
A prime number has no divisor other than 1 and itself: 2, 3, 5, 7, 11, 13.
If the train leaves at 9 and travels 120 km at 60 km per hour, it arrives at 11.
""" + "\n".join(ROLE_WORDS * 40)


def tiny_model_path(cache_dir: Path | None = None) -> Path:
    """Path of the tiny model, building it on first use."""
    dest = (cache_dir or default_cache_dir()) / f"tiny-qwen3-memento-v{RECIPE_VERSION}"
    if not (dest / "config.json").exists():
        build_tiny_model(dest)
    return dest


def build_tiny_model(dest: Path, *, seed: int = 0, init_std: float = 0.4) -> Path:
    """Write tokenizer, config and random weights to `dest` (atomically)."""

    def fill(tmp: Path) -> None:
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(tmp)
        _build_weights(tmp, vocab_size=len(tokenizer), seed=seed, init_std=init_std, tok=tokenizer)
        (tmp / "memento_recipe.json").write_text(
            json.dumps({"recipe_version": RECIPE_VERSION, "seed": seed, "init_std": init_std})
        )

    return publish_atomically(dest, fill, complete=lambda path: (path / "config.json").exists())


def build_tokenizer():
    """The tiny byte-level BPE with ChatML and Memento special tokens (single ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
    )
    tokenizer.chat_template = MEMENTO_CHAT_TEMPLATE
    for word in ROLE_WORDS:
        if len(tokenizer.encode(word, add_special_tokens=False)) != 1:
            raise RuntimeError(f"tiny tokenizer does not keep {word!r} as one token")
    return tokenizer


def _build_weights(dest: Path, *, vocab_size: int, seed: int, init_std: float, tok) -> None:
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(  # type: ignore[call-arg]  # rope_theta, torch_dtype: kwargs of PretrainedConfig
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, init_std)
    model.save_pretrained(dest, safe_serialization=True)
    GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    ).save_pretrained(dest)
