"""Live KV per decode step of one Memento request (the sawtooth), with and without eviction.

One request with a paper-shaped trace (memento-reference.md 1.8: ~9 blocks of ~1,150
tokens, mementos of ~194 tokens), scaled for CPU with `--scale`. The structure and
its lengths are forced by a structural tag whose budgets the tiny model fills, so
the run with eviction and the run without (`compact_on_summary_end: false`, same
server) generate the same tokens count; the benchmark checks that.

At every step it compares the live KV the server reports (`meta_info["memento"]`,
streamed per token) with the theoretical live set computed here from the token ids
(prompt + mementos + open block): the ratio must be 1.000.

    python -m benchmarks kv_profile --scale 0.1 --out artifacts/kv_profile
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from benchmarks._common import MEMENTO_PER_REQUEST, add_server_options, server_setup
from memento_sglang.frontend.structural_tag import BlockBudget, memento_structural_tag
from tests.support.server import ServerProcess, ServerSpec

PAPER_BLOCK_TOKENS, PAPER_MEMENTO_TOKENS, PAPER_BLOCKS = 1150, 194, 9


@dataclass(frozen=True)
class TraceShape:
    blocks: int
    block_tokens: int
    memento_tokens: int
    answer_tokens: int = 8

    @classmethod
    def paper(cls, scale: float, blocks: int = PAPER_BLOCKS) -> TraceShape:
        return cls(
            blocks, max(1, round(PAPER_BLOCK_TOKENS * scale)), max(1, round(PAPER_MEMENTO_TOKENS * scale))
        )


@dataclass(frozen=True)
class Profile:
    """Live KV per generated token: computed from the ids (`theoretical`, every token) and
    reported by the server (`reported[i]` after token `steps[i]`; a stream chunk that
    carries several tokens reports once, so a loaded machine reports fewer steps)."""

    output_ids: list[int]
    steps: list[int]
    reported: list[int]
    theoretical: list[int]

    @property
    def peak(self) -> int:
        return max(self.theoretical)

    @property
    def area(self) -> int:
        """Area under the live-KV curve, in token-steps."""
        return sum(self.theoretical)

    @property
    def live_over_theoretical(self) -> tuple[float, float]:
        """Reported over computed live KV at every reported step: (min, max)."""
        ratios = [r / self.theoretical[k - 1] for k, r in zip(self.steps, self.reported, strict=True)]
        return min(ratios), max(ratios)


def request_body(prompt: list[int], shape: TraceShape, evict: bool) -> dict:
    tag = memento_structural_tag(
        [BlockBudget(shape.block_tokens, shape.memento_tokens, exact=True)] * shape.blocks,
        answer_tokens=shape.answer_tokens,
    )
    memento = {"enable": True, "mask_delimiters": False, "compact_on_summary_end": evict}
    budget = shape.blocks * (shape.block_tokens + shape.memento_tokens + 4) + shape.answer_tokens + 4
    params = {
        "temperature": 0.0,
        "max_new_tokens": budget,
        "structural_tag": tag,
        "skip_special_tokens": False,
        "custom_params": {"memento": memento},
    }
    return {"input_ids": prompt, "sampling_params": params, "stream": True}


def stream_live_kv(url: str, body: dict) -> tuple[list[int], list[int], list[int]]:
    """(output ids, the token counts the stream reported at, live KV reported there)."""
    live: dict[int, int] = {}
    output: list[int] = []
    with requests.post(url + "/generate", json=body, stream=True, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            ids = chunk.get("output_ids", [])
            done = chunk["meta_info"]["completion_tokens"]
            output = ids if len(ids) == done else output + ids  # cumulative or incremental
            live[done] = chunk["meta_info"]["memento"]["live_kv_tokens"]
    steps = sorted(k for k in live if k > 0)
    return output, steps, [live[k] for k in steps]


def theoretical_live(ids: list[int], prompt_len: int, ids_of: dict[str, int], evict: bool) -> list[int]:
    """Keys seen by the pass that produced each output token: its query is the token
    before it; closed blocks whose `<|summary_end|>` precedes that query are gone."""
    bs, be, se = ids_of["<|block_start|>"], ids_of["<|block_end|>"], ids_of["<|summary_end|>"]
    out, hidden, start, content = [], 0, None, 0
    closes: dict[int, int] = {}  # position of a summary_end -> content tokens it evicts
    for pos, tid in enumerate(ids):
        if pos >= prompt_len and tid == bs:
            start = pos
        elif tid == be and start is not None:
            content, start = pos - start - 1, None
        elif tid == se and pos >= prompt_len:
            closes[pos] = content
    for k in range(1, len(ids) - prompt_len + 1):
        query = prompt_len + k - 2  # the first token comes from the prefill's last query
        if evict:
            hidden = sum(n for p, n in closes.items() if p < query)
        out.append(query + 1 - hidden)
    return out


def profile(url: str, prompt: list[int], shape: TraceShape, ids_of: dict[str, int], evict: bool) -> Profile:
    output, steps, reported = stream_live_kv(url, request_body(prompt, shape, evict))
    theory = theoretical_live(prompt + output, len(prompt), ids_of, evict)
    kept = [i for i, k in enumerate(steps) if k <= len(theory)]
    return Profile(output, [steps[i] for i in kept], [reported[i] for i in kept], theory)


def plot(with_eviction: Profile, without: Profile, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(without.steps, without.reported, label=f"no eviction (peak {without.peak})", color="tab:gray")
    ax.plot(with_eviction.steps, with_eviction.reported, label=f"Memento (peak {with_eviction.peak})")
    ax.set_xlabel("decode step")
    ax.set_ylabel("live KV tokens")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(url: str, tokenizer, shape: TraceShape, out_dir: Path) -> dict:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Solve the problem step by step."}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    ids_of = tokenizer.get_vocab()
    evicting = profile(url, prompt, shape, ids_of, evict=True)
    keeping = profile(url, prompt, shape, ids_of, evict=False)
    lo, hi = evicting.live_over_theoretical
    lo_keep, hi_keep = keeping.live_over_theoretical
    result = {
        "shape": asdict(shape),
        "prompt_tokens": len(prompt),
        "output_tokens": [len(evicting.output_ids), len(keeping.output_ids)],
        "peak_kv": {"memento": evicting.peak, "no_eviction": keeping.peak},
        "kv_area": {"memento": evicting.area, "no_eviction": keeping.area},
        "peak_reduction": keeping.peak / evicting.peak,
        "area_reduction": keeping.area / evicting.area,
        "live_over_theoretical": {"memento": [lo, hi], "no_eviction": [lo_keep, hi_keep]},
        "steps": {"memento": evicting.theoretical, "no_eviction": keeping.theoretical},
        "reported_steps": {"memento": evicting.steps, "no_eviction": keeping.steps},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "kv_profile.json").write_text(json.dumps(result, indent=1))
    title = f"{shape.blocks} blocks x {shape.block_tokens} tokens, mementos {shape.memento_tokens}"
    plot(evicting, keeping, out_dir / "kv_profile.png", title)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=0.1, help="paper lengths times this")
    parser.add_argument("--blocks", type=int, default=PAPER_BLOCKS)
    parser.add_argument("--out", type=Path, default=Path("artifacts/kv_profile"))
    add_server_options(parser)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    model, extra = server_setup(args)
    shape = TraceShape.paper(args.scale, args.blocks)
    server = ServerProcess(
        ServerSpec("kv-profile", (*MEMENTO_PER_REQUEST, *extra), max_total_tokens=40000), model
    )
    server.start()
    try:
        server.wait_ready()
        result = run(server.url, AutoTokenizer.from_pretrained(model), shape, args.out)
    finally:
        server.stop()
    print(f"shape {result['shape']}, prompt {result['prompt_tokens']}, output {result['output_tokens']}")
    print(f"{'':14}{'peak KV':>9}{'KV area':>11}{'live/theory':>16}")
    for key in ("memento", "no_eviction"):
        lo, hi = result["live_over_theoretical"][key]
        print(f"{key:14}{result['peak_kv'][key]:>9}{result['kv_area'][key]:>11}{lo:>8.3f}-{hi:.3f}")
    print(f"peak reduction {result['peak_reduction']:.2f}x, area reduction {result['area_reduction']:.2f}x")
    print(f"wrote {args.out / 'kv_profile.json'} and {args.out / 'kv_profile.png'}")


if __name__ == "__main__":
    main()
