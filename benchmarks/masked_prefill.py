"""Masked vs unmasked prefill throughput for prompts that contain closed blocks.

One server (CPU defaults without a GPU, radix cache off so every prefill is real).
The same prompts are prefilled with Memento on (masked prefill, then compaction)
and off (plain causal prefill) in the same run; the ratio is masked / unmasked.

    python -m benchmarks masked_prefill --sizes 2048 8192 32768 --blocks 4 8 16

The tiny test model's RoPE has no length limit, so the server's context length is
raised to the largest size (SGLang's own override switch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import requests
from tqdm import tqdm

from benchmarks._common import add_server_options, machine, server_setup
from tests.support.server import ServerProcess, ServerSpec


def build_prompt(tokenizer, size: int, n_blocks: int) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Benchmark"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    ids = list(ids) + tokenizer.convert_tokens_to_ids(["<think>"])
    bs, be, ss, se = tokenizer.convert_tokens_to_ids(
        ["<|block_start|>", "<|block_end|>", "<|summary_start|>", "<|summary_end|>"]
    )
    filler = tokenizer.encode(" we add the numbers and check the sum", add_special_tokens=False)
    per_block = (size - len(ids) - 8) // n_blocks
    memento_len = max(2, per_block // 6)
    content_len = per_block - memento_len - 4
    for _ in range(n_blocks):
        content = (filler * (content_len // len(filler) + 1))[:content_len]
        memento = (filler * (memento_len // len(filler) + 1))[:memento_len]
        ids += [bs, *content, be, ss, *memento, se]
    return ids[:size]


def time_prefill(url: str, ids: list[int], memento: bool, repeats: int) -> float:
    body = {
        "input_ids": ids,
        "sampling_params": {
            "temperature": 0.0,
            "max_new_tokens": 1,
            "custom_params": {"memento": {"enable": memento}},
        },
    }
    requests.post(url + "/generate", json=body, timeout=600).raise_for_status()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        requests.post(url + "/generate", json=body, timeout=600).raise_for_status()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--chunked-prefill-size", type=int, default=None,
        help="SGLang's prefill chunk (its CPU default is 4096; chunks after the first carry a prefix)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("artifacts/masked_prefill.json"))
    add_server_options(parser)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    model, extra = server_setup(args)
    tokenizer = AutoTokenizer.from_pretrained(model)
    config = json.dumps({"mask_delimiters": False})
    context = max(args.sizes) + 64
    chunking: tuple[str, ...] = ()
    if args.chunked_prefill_size is not None:  # SGLang sizes its static fraction from the chunk
        chunk = str(args.chunked_prefill_size)
        chunking = ("--chunked-prefill-size", chunk, "--mem-fraction-static", "0.5")
    server = ServerProcess(
        ServerSpec(
            "bench",
            (
                "--memento-config",
                config,
                "--disable-radix-cache",
                "--context-length",
                str(context),
                *chunking,
                *extra,
            ),
            max_total_tokens=2 * context,
            env=(("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", "1"),),
        ),
        model,
    )
    server.start()
    rows = []
    try:
        server.wait_ready()
        for size in tqdm(args.sizes, desc="prompt sizes"):
            for n_blocks in args.blocks:
                ids = build_prompt(tokenizer, size, n_blocks)
                masked = time_prefill(server.url, ids, True, args.repeats)
                plain = time_prefill(server.url, ids, False, args.repeats)
                rows.append(
                    {
                        "prompt_tokens": len(ids),
                        "closed_blocks": n_blocks,
                        "masked_tok_s": len(ids) / masked,
                        "unmasked_tok_s": len(ids) / plain,
                        "ratio": plain / masked,
                    }
                )
    finally:
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine(), "chunked_prefill_size": args.chunked_prefill_size}
    args.out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"{'tokens':>7} {'blocks':>6} {'masked tok/s':>13} {'unmasked tok/s':>15} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['prompt_tokens']:>7} {r['closed_blocks']:>6} {r['masked_tok_s']:>13.0f}"
            f" {r['unmasked_tok_s']:>15.0f} {r['ratio']:>6.2f}"
        )


if __name__ == "__main__":
    main()
