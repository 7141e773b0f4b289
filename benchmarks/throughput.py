"""Throughput under KV pressure: Memento's scheduling vs SGLang's, vs no eviction.

N concurrent requests on one server whose KV pool (`--pool`) is too small for N
unevicted rows. Every block, memento and answer length is forced exactly, so all
modes do the same work. Three modes, per request, on the same server (same engine,
pool and scheduler):

    memento         eviction + Memento-aware admission (the default)
    stock_admission eviction, but SGLang's own estimate (`admission_estimate: false`)
    no_eviction     `compact_on_summary_end: false` (Memento tracking, nothing evicted)

Two kinds of traces: `sync`, the paper's trace shape (memento-reference.md 1.8,
scaled by `--scale`) for every request, all sent at once; `staggered`, 5-13 blocks of
varied lengths per request (seeded), arriving `--stagger` seconds apart.

Per run: output tokens/s, wall time, mean and max running requests and KV in use
(share of the pool) over decode steps (SGLang's decode log at every step), output
tokens per decode step (the GPU proxy: a CPU's step time grows with the batch),
requests SGLang retracted and the output tokens they had to recompute. With `--repeats R`
each point runs R times per mode (modes interleaved) and the median run is reported, with
the range of tokens/s beside it.

    python -m benchmarks throughput --scale 0.05 --pool 4000 --concurrency 16 32 64
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from tqdm import tqdm

from benchmarks import kv_profile  # the paper's trace shape (one definition)
from benchmarks._common import (
    MEMENTO_PER_REQUEST,
    add_server_options,
    chat_prompts,
    counter,
    machine,
    server_setup,
)
from memento_sglang.frontend.structural_tag import BlockBudget, memento_structural_tag
from memento_sglang.sglang_plugin.server_log import decode_steps
from tests.support.server import ServerProcess, ServerSpec

RETRACTED = "sglang:num_retracted_requests_total"
RETRACTED_TOKENS = "sglang:memento_retracted_output_tokens_total"
MODES = {
    "memento": {"compact_on_summary_end": True},
    "stock_admission": {"compact_on_summary_end": True, "admission_estimate": False},
    "no_eviction": {"compact_on_summary_end": False},
}


def trace_bodies(tokenizer, shape, n: int, kind: str, mode: str, seed: int = 0) -> list[dict]:
    """One request body per trace; the same traces for every mode (seeded)."""
    rng = random.Random(seed)
    prompts = chat_prompts(tokenizer, [f"Problem {i}: think it through." for i in range(n)])
    bodies = []
    for prompt in prompts:
        if kind == "sync":
            blocks = [(shape.block_tokens, shape.memento_tokens)] * shape.blocks
        else:
            blocks = [
                (
                    max(2, round(shape.block_tokens * rng.uniform(0.5, 1.5))),
                    max(1, round(shape.memento_tokens * rng.uniform(0.5, 1.5))),
                )
                for _ in range(rng.randint(5, 13))
            ]
        tag = memento_structural_tag(
            [BlockBudget(b, m, exact=True) for b, m in blocks], answer_tokens=shape.answer_tokens
        )
        memento = {"enable": True, "mask_delimiters": False, **MODES[mode]}
        params = {
            "temperature": 0.0,
            "max_new_tokens": sum(b + m + 4 for b, m in blocks) + shape.answer_tokens + 4,
            "structural_tag": tag,
            "skip_special_tokens": False,
            "custom_params": {"memento": memento},
        }
        bodies.append({"input_ids": prompt, "sampling_params": params})
    return bodies


def run(server, tokenizer, shape, n: int, kind: str, mode: str, pool: int, stagger: float) -> dict:
    bodies = trace_bodies(tokenizer, shape, n, kind, mode)
    before = counter(server.url, RETRACTED), counter(server.url, RETRACTED_TOKENS)
    log_start = len(server.log_text())

    def send(i: int) -> dict:
        if kind == "staggered":
            time.sleep(i * stagger)
        r = requests.post(server.url + "/generate", json=bodies[i], timeout=7200)
        r.raise_for_status()
        return r.json()

    start = time.perf_counter()
    with ThreadPoolExecutor(n) as executor:
        outs = list(executor.map(send, range(n)))
    wall = time.perf_counter() - start
    output_tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    steps = decode_steps(server.log_text()[log_start:])
    running = [r for r, _ in steps] or [0]
    used = [t for _, t in steps] or [0]
    return {
        "trace": kind,
        "concurrency": n,
        "mode": mode,
        "output_tokens": output_tokens,
        "wall_s": wall,
        "tokens_per_s": output_tokens / wall,
        "decode_steps": len(steps),
        "tokens_per_step": output_tokens / max(1, len(steps)),
        "mean_running": sum(running) / len(running),
        "max_running": max(running),
        "peak_kv_share": max(used) / pool,
        "mean_kv_share": sum(used) / len(used) / pool,
        "retracted_requests": counter(server.url, RETRACTED) - before[0],
        "retracted_output_tokens": counter(server.url, RETRACTED_TOKENS) - before[1],
        "timeline": steps,  # (running requests, KV slots in use) per decode step
    }


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s (2 CPU cores move a 10-20 s run by 10-20%), with
    every run's tokens/s alongside."""
    ranked = sorted(runs, key=lambda r: r["tokens_per_s"])
    return {**ranked[(len(ranked) - 1) // 2], "tokens_per_s_runs": [r["tokens_per_s"] for r in runs]}


def plot(rows: list[dict], pool: int, path: Path) -> None:
    """Running requests and KV in use over decode steps, one panel per trace kind, at the
    largest N: how each mode spends the pool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["trace"] for r in rows})
    fig, axes = plt.subplots(2, len(kinds), figsize=(6 * len(kinds), 6), squeeze=False, sharex="col")
    for col, kind in enumerate(kinds):
        n = max(r["concurrency"] for r in rows if r["trace"] == kind)
        for r in (r for r in rows if r["trace"] == kind and r["concurrency"] == n):
            running = [a for a, _ in r["timeline"]]
            share = [b / pool for _, b in r["timeline"]]
            axes[0][col].plot(running, label=r["mode"], linewidth=0.8)
            axes[1][col].plot(share, label=r["mode"], linewidth=0.8)
        axes[0][col].set_title(f"{kind} traces, N={n}, pool {pool}")
        axes[0][col].set_ylabel("running requests")
        axes[1][col].set_ylabel("KV in use / pool")
        axes[1][col].set_xlabel("decode step")
        axes[0][col].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(rows: list[dict]) -> None:
    base = {(r["trace"], r["concurrency"]): r for r in rows if r["mode"] == "no_eviction"}
    print(
        f"{'trace':>9} {'N':>3} {'mode':>15} {'tok/s':>7} {'vs no-ev':>8} {'tok/step':>8} {'run mean':>8} "
        f"{'run max':>7} {'KV peak':>7} {'KV mean':>7} {'retr':>4} {'retr tok':>8} {'tok/s of runs':>16}"
    )
    for r in rows:
        ref = base.get((r["trace"], r["concurrency"]))
        ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else ""
        print(
            f"{r['trace']:>9} {r['concurrency']:>3} {r['mode']:>15} {r['tokens_per_s']:>7.1f} {ratio:>8}"
            f" {r['tokens_per_step']:>8.2f} {r['mean_running']:>8.1f} {r['max_running']:>7}"
            f" {r['peak_kv_share']:>7.2f} {r['mean_kv_share']:>7.2f} {r['retracted_requests']:>4.0f}"
            f" {r['retracted_output_tokens']:>8.0f} {spread(r.get('tokens_per_s_runs', [])):>16}"
        )


def spread(values: list[float]) -> str:
    """min-max of a point's runs (empty for one run)."""
    return f"{min(values):.0f}-{max(values):.0f}" if len(values) > 1 else ""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=0.05, help="paper trace lengths times this")
    parser.add_argument(
        "--pool", type=int, nargs="+", default=[4000], help="KV pool sizes (--max-total-tokens)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--traces", nargs="+", choices=["sync", "staggered"], default=["sync", "staggered"])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--repeats", type=int, default=1, help="runs per point and mode; the median is kept")
    parser.add_argument("--stagger", type=float, default=0.05, help="seconds between staggered arrivals")
    parser.add_argument("--out", type=Path, default=Path("artifacts/throughput.json"))
    add_server_options(parser)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    shape = kv_profile.TraceShape.paper(args.scale)
    model, extra = server_setup(args)
    tokenizer = AutoTokenizer.from_pretrained(model)
    flags = (*MEMENTO_PER_REQUEST, "--enable-metrics", "--decode-log-interval", "1")
    flags += ("--max-running-requests", str(max(args.concurrency)))
    rows = []
    points = [(p, k, n) for p in args.pool for k in args.traces for n in args.concurrency]
    with tqdm(total=len(points) * len(args.modes) * args.repeats, desc="runs") as progress:
        for pool in args.pool:
            spec = ServerSpec(f"throughput-{pool}", (*flags, *extra), max_total_tokens=pool)
            server = ServerProcess(spec, model)
            server.start()
            try:
                server.wait_ready()
                # warm-up: the server learns block and memento lengths from closed blocks
                for body in trace_bodies(tokenizer, shape, 2, "sync", "memento", seed=1):
                    server.generate(body)
                for _, kind, n in [pt for pt in points if pt[0] == pool]:
                    runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
                    for _ in range(args.repeats):  # modes interleaved: drift hits them alike
                        for mode in args.modes:
                            row = run(server, tokenizer, shape, n, kind, mode, pool, args.stagger)
                            runs[mode].append(row)
                            progress.update()
                    rows += [{"pool": pool, **median_run(mode_runs)} for mode_runs in runs.values()]
            finally:
                server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "pools": args.pool, "shape": vars(shape), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2))
    for pool in args.pool:
        pool_rows = [r for r in rows if r["pool"] == pool]
        plot(pool_rows, pool, args.out.with_name(f"{args.out.stem}-{pool}.png"))
        print(f"pool {pool} slots, shape {vars(shape)}")
        print_table(pool_rows)


if __name__ == "__main__":
    main()
