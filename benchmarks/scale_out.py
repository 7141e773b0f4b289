"""Scale out: grouped forks through SGLang's router, 1 and 2 workers, per routing policy.

The prefix-sharing workload (`benchmarks/prefix_sharing.py`): `groups` shared Memento
states (a chat prompt whose reasoning holds closed blocks), all warmed at once with
`max_new_tokens=0` (as `s.fork(n)` does), then `forks` forks of each, all sent at once,
each with its own question and an open block. sglang-router 0.3.2 drops
`structural_tag` and `custom_params` from a `/generate` body (docs/scale-out.md), so the
workers run Memento server-wide and the forks are greedy with `ignore_eos`, exactly
`--new-tokens` tokens each (the same work under every policy). The requests go through
`python -m sglang_router.launch_router` in front of identical Memento servers (Memento
radix cache, `--enable-metrics`):

    1 worker      the router in front of one server (the sharing every policy should reach)
    round_robin   2 workers, requests alternate
    cache_aware   2 workers, SGLang's default: the longest text-prefix match
    cache_aware_balancing
                  the same with `--balance-abs-threshold 0 --balance-rel-threshold 1`:
                  it balances at any load gap, what the default does only under load
                  (a gap above 64 requests and 1.5x)
    manual_key    2 workers, `--policy manual --assignment-mode min_group`, every request
                  with `X-SMG-Routing-Key: routing_key(...)` (memento_sglang/router.py)

On a CPU each worker runs `--threads-per-worker` torch threads (half the cores by
default): two workers with every core each fight over the cores (tokens/s varied tenfold
on 2 cores).

Per row: forks that reused every memento of their state (they ran on the worker that
holds it), SGLang's `cached_tokens` over the forks' prompt tokens, output tokens/s of the
fork batch, and the requests each worker served (its `sglang:num_requests_total`).
The servers' caches are flushed and a fresh router starts before every run; with
`--repeats R` the median run by tokens/s is reported.

    python -m benchmarks scale_out
    python -m benchmarks scale_out --closed-blocks 9 --block-tokens 192 --memento-tokens 32 --new-tokens 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
from tqdm import tqdm

from benchmarks._common import add_server_options, chat_prompts, counter, machine, server_setup
from benchmarks.prefix_sharing import MEMENTO_ON, Workload, shared_state
from memento_sglang.router import ROUTING_KEY_HEADER, router_command, routing_key
from tests.support.server import ServerProcess, ServerSpec, free_port

REQUESTS = "sglang:num_requests_total"
#: row name -> (router policy, extra router flags, send the routing key)
POLICIES: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "round_robin": ("round_robin", (), False),
    "cache_aware": ("cache_aware", (), False),
    "cache_aware_balancing": (
        "cache_aware",
        ("--balance-abs-threshold", "0", "--balance-rel-threshold", "1.0"),
        False,
    ),
    "manual_key": ("manual", ("--assignment-mode", "min_group"), True),
}
MEMENTO_TOKENS = ("<think>", "<|block_start|>", "<|block_end|>", "<|summary_start|>", "<|summary_end|>")


# ------------------------------------------------------------------ the router process


@dataclass
class Router:
    """A running `sglang_router.launch_router` (started by `running_router`)."""

    url: str
    proc: subprocess.Popen
    log_path: Path
    worker_urls: tuple[str, ...] = field(default=())

    def generate(self, body: dict, key: str | None = None, timeout: float = 600.0) -> dict:
        headers = {ROUTING_KEY_HEADER: key} if key is not None else None
        r = requests.post(self.url + "/generate", json=body, headers=headers, timeout=timeout)
        if not r.ok:
            raise AssertionError(f"router /generate returned {r.status_code}: {r.text}")
        return r.json()

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def registered_workers(url: str) -> int:
    """Workers the router lists as registered (`GET /workers`); its `/health` is 200 before."""
    try:
        r = requests.get(url + "/workers", timeout=5)
    except requests.RequestException:
        return 0
    if not r.ok:
        return 0
    data = r.json()
    workers = data.get("workers", []) if isinstance(data, dict) else data
    return len(workers)


@contextmanager
def running_router(
    worker_urls: Sequence[str], policy: str, extra: Sequence[str] = (), timeout: float = 60.0
) -> Iterator[Router]:
    """Start a router in front of ready workers, wait until it registered all of them, stop it."""
    port = free_port()
    command = router_command(worker_urls, policy, port, free_port(), extra)
    log_path = Path(tempfile.mkdtemp(prefix=f"memento-router-{policy}-")) / "router.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    router = Router(f"http://127.0.0.1:{port}", proc, log_path, tuple(worker_urls))
    try:
        started = time.monotonic()
        while registered_workers(router.url) < len(worker_urls):
            if proc.poll() is not None:
                raise RuntimeError(f"router exited with code {proc.returncode}:\n{router.log_tail()}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(
                    f"router did not register {len(worker_urls)} workers:\n{router.log_tail()}"
                )
            time.sleep(0.2)
        yield router
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def flush_cache(url: str, timeout: float = 30.0) -> None:
    """Empty a server's radix tree (SGLang refuses while requests run: retry until it is idle)."""
    started = time.monotonic()
    while requests.post(url + "/flush_cache", timeout=30).status_code != 200:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{url} did not flush its cache within {timeout:.0f} s")
        time.sleep(0.5)


def served(worker_urls: Sequence[str]) -> list[int]:
    """Requests each worker finished so far (needs `--enable-metrics`)."""
    return [int(counter(url, REQUESTS)) for url in worker_urls]


# ------------------------------------------------------------------ the workload


@dataclass(frozen=True)
class Fork:
    state: int  # which shared state it continues
    prompt: list[int]
    key: str  # `routing_key` of that state


def grouped_forks(tokenizer, workload: Workload) -> tuple[list[Fork], list[Fork]]:
    """The warm-up request of each state (the state itself) and every fork of it."""
    vocab = tokenizer.get_vocab()
    ids_of = {t: vocab[t] for t in MEMENTO_TOKENS}
    warm, forks = [], []
    for g in range(workload.groups):
        state = shared_state(tokenizer, ids_of, workload, g)
        (chat,) = chat_prompts(tokenizer, [f"Problem {g}: continue the reasoning."])
        assert state[: len(chat)] == chat
        key = routing_key(chat, state[len(chat) :], summary_end_id=ids_of["<|summary_end|>"])
        warm.append(Fork(g, state, key))
        for f in range(workload.forks):
            tail = tokenizer.encode(f" question {f}", add_special_tokens=False) + [ids_of["<|block_start|>"]]
            fork = state + tail
            # the fork's own question and open block are not part of the state it continues
            assert routing_key(chat, fork[len(chat) :], summary_end_id=ids_of["<|summary_end|>"]) == key
            forks.append(Fork(g, fork, key))
    return warm, forks


def fork_body(prompt: list[int], new_tokens: int) -> dict:
    """Greedy, exactly `new_tokens` tokens (`ignore_eos`): only fields the router forwards."""
    params = {
        "temperature": 0.0,
        "max_new_tokens": new_tokens,
        "ignore_eos": True,
        "skip_special_tokens": False,
    }
    return {"input_ids": prompt, "sampling_params": params}


def run(router: Router, tokenizer, workload: Workload, keyed: bool, new_tokens: int) -> dict:
    """Warm each state through the router, then send every fork at once."""
    warm, forks = grouped_forks(tokenizer, workload)
    before = served(router.worker_urls)
    with ThreadPoolExecutor(len(warm)) as pool:  # new states arrive together: room to spread them
        list(pool.map(lambda w: router.generate(fork_body(w.prompt, 0), w.key if keyed else None), warm))
    start = time.perf_counter()

    def generate(fork: Fork) -> dict:
        return router.generate(fork_body(fork.prompt, new_tokens), fork.key if keyed else None)

    with ThreadPoolExecutor(len(forks)) as pool:
        outs = list(pool.map(generate, forks))
    wall = time.perf_counter() - start
    after = served(router.worker_urls)
    output_tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    prompt_tokens = sum(len(f.prompt) for f in forks)
    cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
    return {
        "requests": len(forks),
        "forks_reusing_every_memento": sum(
            o["meta_info"]["memento"]["reused_blocks"] == workload.closed_blocks for o in outs
        ),
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached,
        "cached_share": cached / prompt_tokens,
        "output_tokens": output_tokens,
        "wall_s": wall,
        "tokens_per_s": output_tokens / wall,
        "requests_per_worker": [a - b for a, b in zip(after, before, strict=True)],
    }


def measure(workers: Sequence[ServerProcess], policy: str, extra: Sequence[str], keyed: bool,
            tokenizer, workload: Workload, new_tokens: int) -> dict:  # fmt: skip
    """One run on cold caches and a fresh router."""
    for w in workers:
        flush_cache(w.url)
    with running_router([w.url for w in workers], policy, extra) as router:
        return run(router, tokenizer, workload, keyed, new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = {**asdict(Workload()), "groups": 4, "forks": 8}
    del defaults["new_block_tokens"]  # no structural tag through the router: see --new-tokens
    for name, value in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens each fork generates")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is reported")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="OMP_NUM_THREADS of each worker (default: half the cores, so two workers never fight "
        "over one core and `1 worker` uses half the machine; 0: torch's default, every core)",
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/scale_out.json"))
    add_server_options(parser)
    args = parser.parse_args()
    workload = Workload(**{k: getattr(args, k) for k in defaults})

    from transformers import AutoTokenizer

    model, extra = server_setup(args)
    tokenizer = AutoTokenizer.from_pretrained(model)
    flags = ("--memento-config", MEMENTO_ON, "--enable-metrics", *extra)
    env = (("OMP_NUM_THREADS", str(args.threads_per_worker)),) if args.threads_per_worker else ()
    workers = [
        ServerProcess(ServerSpec(f"worker{i}", flags, max_total_tokens=60000, env=env), model)
        for i in range(2)
    ]
    rows: dict[str, dict] = {}
    try:
        for w in workers:  # both start at once (~50 s each on 2 cores)
            w.start()
        for w in workers:
            w.wait_ready()
        plan = [("1 worker", workers[:1], "round_robin", (), False)]
        plan += [(name, workers, *POLICIES[name]) for name in args.policies]
        with tqdm(total=len(plan) * args.repeats, desc="runs") as progress:
            for name, group, policy, router_flags, keyed in plan:
                runs = []
                for _ in range(args.repeats):
                    runs.append(
                        measure(group, policy, router_flags, keyed, tokenizer, workload, args.new_tokens)
                    )
                    progress.update()
                median = statistics.median_low([r["tokens_per_s"] for r in runs])
                best = next(r for r in runs if r["tokens_per_s"] == median)
                rows[name] = {
                    "workers": len(group), "policy": policy, "router_flags": list(router_flags),
                    "routing_key": keyed, **best,
                    "tokens_per_s_range": [min(r["tokens_per_s"] for r in runs),
                                           max(r["tokens_per_s"] for r in runs)],
                    "runs": runs,
                }  # fmt: skip
        for w in workers:
            w.assert_healthy()
    finally:
        for w in workers:
            w.stop()
    result = {
        "machine": machine(),
        "workload": {**{k: getattr(workload, k) for k in defaults}, "new_tokens": args.new_tokens},
        "repeats": args.repeats,
        "threads_per_worker": args.threads_per_worker,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'row':>22} {'workers':>7} {'all mementos':>12} {'cached':>7} {'tok/s':>8} {'per worker':>10}")
    for name, r in rows.items():
        hits = f"{r['forks_reusing_every_memento']}/{r['requests']}"
        split = "/".join(str(n) for n in r["requests_per_worker"])
        print(f"{name:>22} {r['workers']:>7} {hits:>12} {r['cached_share']:>7.3f}"
              f" {r['tokens_per_s']:>8.1f} {split:>10}")  # fmt: skip


if __name__ == "__main__":
    main()
