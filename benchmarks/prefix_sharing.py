"""Prefix sharing through mementos: forks and shared-prefix groups, three servers.

Every request continues a shared Memento state (a prompt whose reasoning already
holds closed blocks) with its own question, one more block and an answer; the
lengths are forced exactly by the structural tag, so every server does the same
work. The same engine and pool run it three ways:

* `memento_radix`: Memento eviction + the Memento radix cache (the default);
* `memento_no_sharing`: Memento eviction, `--disable-radix-cache`;
* `stock`: stock SGLang behaviour (Memento off, SGLang's radix cache, no eviction).

KV in use is SGLang's own `#token` (slots held by running requests and the tree
paths they lock), read from its decode log at every step; the peak over the run
is what the pool must hold. Tokens/s are output tokens over the batch wall time.

    python -m benchmarks prefix_sharing                       # 16 forks, 1 group
    python -m benchmarks prefix_sharing --groups 4 --forks 8  # shared-prefix groups
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from benchmarks._common import add_server_options, chat_prompts, machine, server_setup
from memento_sglang.frontend.structural_tag import BlockBudget, memento_structural_tag
from memento_sglang.sglang_plugin.server_log import peak_used_tokens
from tests.support.server import ServerProcess, ServerSpec

MEMENTO_ON = json.dumps({"enable": True, "mask_delimiters": False})
CONFIGS = {
    "memento_radix": ("--memento-config", MEMENTO_ON),
    "memento_no_sharing": ("--memento-config", MEMENTO_ON, "--disable-radix-cache"),
    "stock": (),
}
WORDS = ("we", "add", "the", "numbers", "then", "check", "the", "sum", "and", "the", "product", "of",
         "the", "primes")  # fmt: skip


@dataclass(frozen=True)
class Workload:
    """`groups` shared Memento states, each continued by `forks` requests."""

    groups: int = 1
    forks: int = 16
    closed_blocks: int = 6
    block_tokens: int = 96
    memento_tokens: int = 16
    new_block_tokens: int = 24


def shared_state(tokenizer, ids_of: dict[str, int], workload: Workload, group: int) -> list[int]:
    """A chat prompt and a reasoning trace with `closed_blocks` closed blocks."""
    (ids,) = chat_prompts(tokenizer, [f"Problem {group}: continue the reasoning."])
    ids.append(ids_of["<think>"])
    for b in range(workload.closed_blocks):
        text = " ".join(WORDS[(b + i) % len(WORDS)] for i in range(4 * workload.block_tokens))
        content = tokenizer.encode(text, add_special_tokens=False)[: workload.block_tokens]
        memento = tokenizer.encode(text, add_special_tokens=False)[: workload.memento_tokens]
        ids += [ids_of["<|block_start|>"], *content, ids_of["<|block_end|>"], ids_of["<|summary_start|>"]]
        ids += [*memento, ids_of["<|summary_end|>"]]
    return ids


def request_body(prompt: list[int], workload: Workload, memento: bool, max_new_tokens: int | None = None
                 ) -> dict:  # fmt: skip
    tag = memento_structural_tag(
        [], answer_tokens=4, in_think=True,
        resume_open_block=BlockBudget(workload.new_block_tokens, 4, exact=True),
    )  # fmt: skip
    params = {
        "temperature": 0.0,
        "max_new_tokens": workload.new_block_tokens + 16 if max_new_tokens is None else max_new_tokens,
        "structural_tag": tag,
        "skip_special_tokens": False,
    }
    if not memento:
        params["custom_params"] = {"memento": {"enable": False}}
    return {"input_ids": prompt, "sampling_params": params}


def run(url: str, log_text, tokenizer, workload: Workload, memento: bool) -> dict:
    """Warm each shared state (as `s.fork(n)` does), then send every fork at once."""
    vocab = tokenizer.get_vocab()
    ids_of = {t: vocab[t] for t in ("<think>", "<|block_start|>", "<|block_end|>", "<|summary_start|>",
                                   "<|summary_end|>")}  # fmt: skip
    states = [shared_state(tokenizer, ids_of, workload, g) for g in range(workload.groups)]
    for state in states:
        requests.post(url + "/generate", json=request_body(state, workload, memento, 0), timeout=600)
    prompts = [
        state + tokenizer.encode(f" question {f}", add_special_tokens=False) + [ids_of["<|block_start|>"]]
        for state in states for f in range(workload.forks)
    ]  # fmt: skip
    log_start = len(log_text())
    start = time.perf_counter()

    def generate(prompt: list[int]) -> dict:
        body = request_body(prompt, workload, memento)
        return requests.post(url + "/generate", json=body, timeout=3600).json()

    with ThreadPoolExecutor(len(prompts)) as pool:
        outs = list(pool.map(generate, prompts))
    wall = time.perf_counter() - start
    output_tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return {
        "requests": len(prompts),
        "prompt_tokens": sum(len(p) for p in prompts),
        "output_tokens": output_tokens,
        "cached_tokens": sum(o["meta_info"]["cached_tokens"] for o in outs),
        "peak_kv_tokens": peak_used_tokens(log_text()[log_start:]),
        "wall_s": wall,
        "tokens_per_s": output_tokens / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, value in asdict(Workload()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    parser.add_argument("--out", type=Path, default=Path("artifacts/prefix_sharing.json"))
    add_server_options(parser)
    args = parser.parse_args()
    workload = Workload(**{k: getattr(args, k) for k in asdict(Workload())})

    from transformers import AutoTokenizer

    model, extra = server_setup(args)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = {}
    for name, flags in tqdm(CONFIGS.items(), desc="servers"):
        spec = ServerSpec(name, (*flags, "--decode-log-interval", "1", *extra), max_total_tokens=60000)
        server = ServerProcess(spec, model)
        server.start()
        try:
            server.wait_ready()
            rows[name] = run(server.url, server.log_text, tokenizer, workload, memento=name != "stock")
        finally:
            server.stop()
    peak = {name: r["peak_kv_tokens"] for name, r in rows.items()}
    result = {
        "machine": machine(),
        "workload": asdict(workload),
        "rows": rows,
        "kv_vs_no_sharing": peak["memento_radix"] / peak["memento_no_sharing"],
        "kv_vs_stock": peak["memento_radix"] / peak["stock"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'server':>20} {'peak KV':>8} {'cached':>8} {'out tok':>8} {'tok/s':>8}")
    for name, r in rows.items():
        print(f"{name:>20} {r['peak_kv_tokens']:>8} {r['cached_tokens']:>8} {r['output_tokens']:>8}"
              f" {r['tokens_per_s']:>8.1f}")  # fmt: skip
    print(f"peak KV: {result['kv_vs_no_sharing']:.3f}x of no sharing, {result['kv_vs_stock']:.3f}x of stock")


if __name__ == "__main__":
    main()
