"""Throughput under KV pressure: Memento vs the same server with eviction off.

N concurrent requests with paper-shaped traces (memento-reference.md 1.8, scaled by
`--scale`; every block, memento and answer length forced exactly, so both runs do
the same work) on one server whose KV pool (`--pool`) is too small for N
unevicted rows. The two runs differ only in `compact_on_summary_end` per request:
same engine, same pool, same scheduler. Reported per run: output tokens/s, batch
wall time, peak KV in use (SGLang's `#token`, decode log at every step) and the
requests SGLang retracted for lack of KV (`sglang:num_retracted_requests_total`).
The concurrency sweep mirrors the paper's Fig. 8.

    python benchmarks/throughput.py --scale 0.05 --pool 4000 --concurrency 4 8 16 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from _common import (  # noqa: E402
    add_server_options,
    chat_prompts,
    counter,
    machine,
    peak_used_tokens,
    server_setup,
    sibling,
)
from support.server import ServerProcess, ServerSpec  # noqa: E402

RETRACTED = "sglang:num_retracted_requests_total"
kv_profile = sibling("kv_profile")  # the trace shape and request body (one definition)


def run(url: str, log_text, tokenizer, shape, concurrency: int, evict: bool) -> dict:
    prompts = chat_prompts(tokenizer, [f"Problem {i}: think it through." for i in range(concurrency)])
    bodies = [{**kv_profile.request_body(p, shape, evict), "stream": False} for p in prompts]
    before, log_start = counter(url, RETRACTED), len(log_text())
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outs = list(pool.map(lambda b: requests.post(url + "/generate", json=b, timeout=7200).json(), bodies))
    wall = time.perf_counter() - start
    output_tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return {
        "concurrency": concurrency,
        "evict": evict,
        "output_tokens": output_tokens,
        "wall_s": wall,
        "tokens_per_s": output_tokens / wall,
        "peak_kv_tokens": peak_used_tokens(log_text()[log_start:]),
        "retracted_requests": counter(url, RETRACTED) - before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=0.05, help="paper trace lengths times this")
    parser.add_argument("--pool", type=int, default=4000, help="KV pool size (--max-total-tokens)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--out", type=Path, default=Path("artifacts/throughput.json"))
    add_server_options(parser)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    shape = kv_profile.TraceShape.paper(args.scale)
    model, extra = server_setup(args)
    tokenizer = AutoTokenizer.from_pretrained(model)
    flags = (
        "--enable-metrics",
        "--decode-log-interval",
        "1",
        "--max-running-requests",
        str(max(args.concurrency)),
    )
    server = ServerProcess(ServerSpec("throughput", (*flags, *extra), max_total_tokens=args.pool), model)
    server.start()
    rows = []
    try:
        server.wait_ready()
        run(server.url, server.log_text, tokenizer, shape, 2, True)  # warm-up
        for n in tqdm(args.concurrency, desc="concurrency"):
            rows += [run(server.url, server.log_text, tokenizer, shape, n, evict) for evict in (True, False)]
    finally:
        server.stop()
    by_key = {(r["concurrency"], r["evict"]): r for r in rows}
    speedups = {
        n: by_key[n, True]["tokens_per_s"] / by_key[n, False]["tokens_per_s"] for n in args.concurrency
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine(),
        "pool": args.pool,
        "shape": vars(shape),
        "rows": rows,
        "speedup": speedups,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'N':>4} {'evict':>5} {'tok/s':>8} {'wall s':>7} {'peak KV':>8} {'retracted':>9} {'speedup':>8}")
    for r in rows:
        speed = f"{speedups[r['concurrency']]:.2f}x" if r["evict"] else ""
        print(
            f"{r['concurrency']:>4} {str(r['evict']):>5} {r['tokens_per_s']:>8.1f} {r['wall_s']:>7.1f}"
            f" {r['peak_kv_tokens']:>8} {r['retracted_requests']:>9.0f} {speed:>8}"
        )


if __name__ == "__main__":
    main()
