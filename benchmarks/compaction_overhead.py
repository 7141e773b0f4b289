"""Scheduler time spent compacting KV rows per decode step, batch 1 to 128, page sizes 1-64.

The same concurrent requests (exact forced lengths) run with eviction and with
`compact_on_summary_end: false` on one server per page size (`--page-size`) with
`--enable-metrics`. The plugin's own counters give the time spent in compaction
(`sglang:memento_compaction_seconds_total`), the decode steps it prepared and, with
pages, the tokens whose KV it moved (`kv_tokens_moved_total`: the survivors of
partial pages; blocks of 24 tokens are never whole pages); the wall time of the batch
over its decode steps approximates a step (prefill included, so the share is an upper
bound).

    python -m benchmarks compaction_overhead --batches 1 8 32 128 --page-sizes 1 16 64
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from tqdm import tqdm

from benchmarks._common import (
    MEMENTO_PER_REQUEST,
    add_server_options,
    chat_prompts,
    counter,
    machine,
    server_setup,
)
from memento_sglang.frontend.structural_tag import BlockBudget, memento_structural_tag
from tests.support.server import ServerProcess, ServerSpec

COUNTERS = ("decode_steps_total", "compaction_seconds_total", "tokens_evicted_total", "kv_tokens_moved_total")


def scrape(url: str) -> dict[str, float]:
    return {name: counter(url, f"sglang:memento_{name}") for name in COUNTERS}


def body(prompt: list[int], blocks: int, block_tokens: int, memento_tokens: int, evict: bool) -> dict:
    tag = memento_structural_tag(
        [BlockBudget(block_tokens, memento_tokens, exact=True)] * blocks, answer_tokens=2
    )
    memento = {"enable": True, "mask_delimiters": False, "compact_on_summary_end": evict}
    params = {
        "temperature": 0.0,
        "max_new_tokens": blocks * (block_tokens + memento_tokens + 4) + 8,
        "structural_tag": tag,
        "skip_special_tokens": False,
        "custom_params": {"memento": memento},
    }
    return {"input_ids": prompt, "sampling_params": params}


def measure(url: str, tokenizer, batch: int, evict: bool, *, page_size: int = 1, blocks: int = 6,
            block_tokens: int = 24, memento_tokens: int = 4) -> dict:  # fmt: skip
    prompts = chat_prompts(tokenizer, [f"Question {i}" for i in range(batch)])
    bodies = [body(p, blocks, block_tokens, memento_tokens, evict) for p in prompts]
    before = scrape(url)
    start = time.perf_counter()
    with ThreadPoolExecutor(batch) as pool:
        outs = list(pool.map(lambda b: requests.post(url + "/generate", json=b, timeout=3600).json(), bodies))
    wall = time.perf_counter() - start
    after = scrape(url)
    steps = after["decode_steps_total"] - before["decode_steps_total"]
    seconds = after["compaction_seconds_total"] - before["compaction_seconds_total"]
    return {
        "page_size": page_size,
        "batch": batch,
        "evict": evict,
        "output_tokens": sum(o["meta_info"]["completion_tokens"] for o in outs),
        "tokens_evicted": after["tokens_evicted_total"] - before["tokens_evicted_total"],
        "kv_tokens_moved": after["kv_tokens_moved_total"] - before["kv_tokens_moved_total"],
        "decode_steps": steps,
        "compaction_us_per_step": 1e6 * seconds / steps,
        "step_ms": 1e3 * wall / steps,
        "compaction_share": seconds / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--page-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--out", type=Path, default=Path("artifacts/compaction_overhead.json"))
    add_server_options(parser)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    model, extra = server_setup(args)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = []
    for page_size in args.page_sizes:
        flags = (
            *MEMENTO_PER_REQUEST,
            "--enable-metrics",
            "--max-running-requests",
            str(max(args.batches)),
            "--page-size",
            str(page_size),
            *extra,
        )
        server = ServerProcess(ServerSpec(f"overhead-page{page_size}", flags, max_total_tokens=80000), model)
        server.start()
        try:
            server.wait_ready()
            measure(server.url, tokenizer, 2, True, page_size=page_size)  # warm-up
            for batch in tqdm(args.batches, desc=f"page size {page_size}: batch sizes"):
                for evict in (True, False):
                    rows.append(measure(server.url, tokenizer, batch, evict, page_size=page_size))
        finally:
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    print(
        f"{'page':>4} {'batch':>5} {'evict':>5} {'steps':>6} {'moved':>7} {'compaction us/step':>19}"
        f" {'step ms':>8} {'share':>7}"
    )
    for r in rows:
        us, share = r["compaction_us_per_step"], 100 * r["compaction_share"]
        print(
            f"{r['page_size']:>4} {r['batch']:>5} {str(r['evict']):>5} {r['decode_steps']:>6.0f}"
            f" {r['kv_tokens_moved']:>7.0f} {us:>19.1f} {r['step_ms']:>8.2f} {share:>6.2f}%"
        )
    print("what eviction adds (on minus off): page, batch, us/step, share of the step with eviction")
    for on, off in zip(rows[::2], rows[1::2], strict=True):
        added = on["compaction_us_per_step"] - off["compaction_us_per_step"]
        print(f"{on['page_size']:>4} {on['batch']:>5} {added:>8.1f} {added / 10 / on['step_ms']:>6.2f}%")


if __name__ == "__main__":
    main()
