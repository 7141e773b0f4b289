"""The CPU demo: one grammar-forced Memento generation through `sgl.Engine`.

Builds (once) the embedded tiny Qwen3 with Memento tokens, starts SGLang in-process
with the Memento plugin, generates `<think>` + blocks/mementos + `</think>` + answer
(structure forced by an xgrammar structural tag), and prints each block, its memento
and the KV numbers: live and peak against the peak without eviction.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

from memento_sglang.frontend.structural_tag import BlockBudget, memento_structural_tag

DEMO_CONFIG = {"enable": True, "mask_delimiters": False, "keep_last_n_blocks": 0}


def run(model_path: Path | None, blocks: int, block_tokens: int, memento_tokens: int) -> dict:
    from transformers import AutoTokenizer

    from memento_sglang.engine import Engine
    from memento_sglang.models.tiny import tiny_model_path

    model_path = model_path or tiny_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompt = tokenizer.apply_chat_template(
        [
            {
                "role": "user",
                "content": "Alice has 12 marbles and gives 4 to Bob. How many are left?",
            }
        ],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    tag = memento_structural_tag(
        [BlockBudget(block_tokens + 3 * i, memento_tokens) for i in range(blocks)], answer_tokens=8
    )
    started = time.perf_counter()
    engine = Engine(
        model_path=str(model_path),
        max_total_tokens=20000,
        log_level="error",
        memento_config=DEMO_CONFIG,
    )
    try:
        out = engine.generate(
            input_ids=prompt,
            sampling_params={
                "temperature": 0.0,
                "max_new_tokens": 1024,
                "structural_tag": tag,
                "skip_special_tokens": False,
            },
        )
    finally:
        engine.shutdown()
    out["elapsed_s"] = time.perf_counter() - started
    out["prompt_ids"] = prompt
    return out


def render(out: dict, tokenizer) -> str:
    from memento_sglang.config import MementoConfig
    from memento_sglang.sequence import MementoSequence

    prompt, output = out["prompt_ids"], out["output_ids"]
    spec = MementoConfig.parse(DEMO_CONFIG).resolve(tokenizer.get_vocab(), len(tokenizer))
    seq = MementoSequence(spec, prompt)
    seq.on_output_tokens(output)
    ids = prompt + output
    lines = ["memento-sglang demo (tiny random Qwen3: the text is noise, the mechanism is real)"]
    for b in seq.tracker.closed_blocks:
        block = tokenizer.decode(ids[b.block_start + 1 : b.block_end])
        memento = tokenizer.decode(ids[b.summary_start + 1 : b.summary_end])
        lines.append(
            f"  block {b.index}: {b.block_end - b.block_start - 1:3d} tokens {block!r:.60}\n"
            f"    memento: {b.summary_end - b.summary_start - 1:2d} tokens {memento!r:.60}"
        )
    think_end = ids.index(spec.ids.think_end) if spec.ids.think_end in ids else len(ids)
    lines.append(f"  answer: {tokenizer.decode(ids[think_end + 1 :], skip_special_tokens=True)!r}")
    stats = out["meta_info"]["memento"]
    lines.append(
        f"  mementos closed: {stats['blocks_closed']}, tokens evicted: {stats['tokens_evicted']}\n"
        f"  KV tokens: live {stats['live_kv_tokens']}, peak {stats['peak_live_kv_tokens']}"
        f" vs {stats['peak_kv_tokens_without_eviction']} without eviction"
        f" ({stats['peak_kv_tokens_without_eviction'] / stats['peak_live_kv_tokens']:.2f}x lower)\n"
        f"  wall time {out['elapsed_s']:.1f} s (engine start included)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    # SGLang's import-time UserWarnings (GGUF, Triton on CPU, ...) are noise here.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")
    warnings.simplefilter("ignore", UserWarning)
    parser = argparse.ArgumentParser(prog="memento-sglang demo", description=__doc__)
    parser.add_argument("--model-path", type=Path, default=None)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--block-tokens", type=int, default=24)
    parser.add_argument("--memento-tokens", type=int, default=6)
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    args = parser.parse_args(argv)
    out = run(args.model_path, args.blocks, args.block_tokens, args.memento_tokens)
    if args.json:
        print(json.dumps({k: out[k] for k in ("prompt_ids", "output_ids", "meta_info")}))
        return
    from transformers import AutoTokenizer

    from memento_sglang.models.tiny import tiny_model_path

    print(render(out, AutoTokenizer.from_pretrained(args.model_path or tiny_model_path())))
