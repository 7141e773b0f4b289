"""Problems through a Memento server in each mode: one JSONL line per sample, resumable.

Every mode runs on the same server, so differences come from eviction alone:

- `memento`: blocks leave the KV cache when their memento closes;
- `no_eviction`: the same tracking, nothing evicted (`compact_on_summary_end: false`);
- `restart`: the paper's ablation, each memento recomputed without its block;
- `stock`: Memento off for the request (SGLang as is).

Live KV per step is replayed from the token ids with the server's own eviction rule
(`MementoSequence`), which gives the KV area and the sawtooth; its peak is checked
against the server's `meta_info["memento"]` by the tests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from memento_sglang.config import MementoConfig
from memento_sglang.eval.answers import INSTRUCTIONS, ExtractRule, extract_answer
from memento_sglang.eval.problems import Problem
from memento_sglang.resolver import tokenizer_encoder, tokenizer_vocab
from memento_sglang.sequence import MementoSequence

MODES: dict[str, dict[str, Any]] = {
    "memento": {"enable": True},
    "no_eviction": {"enable": True, "compact_on_summary_end": False},
    "restart": {"enable": True, "restart_mode": True},
    "stock": {"enable": False},
}


@dataclass(frozen=True)
class Sampling:
    """Sampling as the user sets it; `samples` completions per problem share the prompt."""

    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 2048
    samples: int = 1
    seed: int = 0
    top_k: int = -1


@dataclass(frozen=True)
class Structure:
    """Force the Memento structure with a grammar (for models not trained on it): up to
    `max_blocks` blocks of at most `block_tokens`, mementos of at most `memento_tokens`,
    then an answer of at most `answer_tokens`."""

    max_blocks: int
    block_tokens: int
    memento_tokens: int
    answer_tokens: int = 64

    def structural_tag(self) -> str:
        from memento_sglang.frontend.structural_tag import BlockBudget, memento_structural_tag

        budget = BlockBudget(self.block_tokens, self.memento_tokens)
        return memento_structural_tag(budget, max_blocks=self.max_blocks, answer_tokens=self.answer_tokens)


class Target(Protocol):
    """Where requests go: SGLang's native `/generate` body in, its JSON out."""

    def generate(self, body: dict) -> dict | list[dict]: ...


class HttpTarget:
    def __init__(self, url: str, timeout: float = 3600.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def generate(self, body: dict) -> dict | list[dict]:
        import requests

        response = requests.post(f"{self.url}/generate", json=body, timeout=self.timeout)
        if response.status_code != 200:
            raise RuntimeError(f"{self.url}/generate answered {response.status_code}: {response.text[:500]}")
        return response.json()


class EngineTarget:
    """An in-process engine (`memento_sglang.engine.Engine`) on a local model. Its blocking
    `generate` drives one event loop, so requests go one at a time (a request's `n`
    samples still decode together)."""

    def __init__(self, model_path: str | Path, memento_config: dict, **engine_args: Any) -> None:
        from memento_sglang.engine import Engine

        self.engine = Engine(model_path=str(model_path), memento_config=memento_config, **engine_args)
        self._lock = threading.Lock()

    def generate(self, body: dict) -> dict | list[dict]:
        with self._lock:
            return self.engine.generate(input_ids=body["input_ids"], sampling_params=body["sampling_params"])

    def close(self) -> None:
        self.engine.shutdown()


class KVReplay:
    """Live KV after every generated token, from the ids and the server's rule."""

    def __init__(self, tokenizer: Any, server_config: MementoConfig) -> None:
        self._server = server_config
        self._vocab = tokenizer_vocab(tokenizer)
        self._size = len(tokenizer)
        self._encode = tokenizer_encoder(tokenizer)

    def trace(self, mode: str, prompt: Sequence[int], output: Sequence[int]) -> list[int]:
        config = self._server.with_overrides(MODES[mode])
        if not config.enable:  # stock: every token stays
            return [len(prompt) + i for i in range(len(output))]
        spec = config.resolve(self._vocab, self._size, self._encode)
        seq = MementoSequence(spec, prompt, evict_prompt_blocks=True)
        live = []
        for token in output:
            seq.on_output_tokens((token,))
            live.append(seq.stats().live_kv_tokens)
        return live


@dataclass(frozen=True)
class EvalSettings:
    modes: tuple[str, ...]
    sampling: Sampling
    rule: ExtractRule
    memento_config: dict
    structure: Structure | None = None

    def as_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def prompt_ids(tokenizer: Any, problem: Problem, rule: ExtractRule) -> list[int]:
    messages = [{"role": "user", "content": f"{problem.question}\n\n{INSTRUCTIONS[rule]}"}]
    chat = tokenizer.apply_chat_template
    return list(chat(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def request_body(prompt: list[int], mode: str, settings: EvalSettings) -> dict:
    s = settings.sampling
    params: dict[str, Any] = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "max_new_tokens": s.max_new_tokens,
        "n": s.samples,
        "sampling_seed": s.seed,
        "skip_special_tokens": False,
        "custom_params": {"memento": MODES[mode]},
    }
    if settings.structure is not None:
        params["structural_tag"] = settings.structure.structural_tag()
    return {"input_ids": prompt, "sampling_params": params}


def run_eval(
    problems: Sequence[Problem],
    target: Target,
    tokenizer: Any,
    settings: EvalSettings,
    out_dir: Path,
    *,
    concurrency: int = 4,
    progress: bool = True,
) -> list[dict]:
    """Every (problem, mode) not yet in `out_dir/samples.jsonl`, appended to it; returns
    all records of this run's problems and modes (earlier ones included)."""
    unknown = [m for m in settings.modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; known: {', '.join(MODES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_same_settings(out_dir / "settings.json", settings)
    samples_path = out_dir / "samples.jsonl"
    records = _read_records(samples_path)
    done = _complete_jobs(records, settings.sampling.samples)
    records = [r for r in records if (r["problem_id"], r["mode"]) in done]  # a killed job runs again
    samples_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    jobs = [(p, m) for p in problems for m in settings.modes if (p.id, m) not in done]
    replay = KVReplay(tokenizer, MementoConfig.parse(settings.memento_config))
    lock = threading.Lock()

    def run_job(job: tuple[Problem, str]) -> None:
        problem, mode = job
        prompt = prompt_ids(tokenizer, problem, settings.rule)
        outs = target.generate(request_body(prompt, mode, settings))
        rows = [
            sample_record(problem, mode, k, prompt, out, settings.rule, replay)
            for k, out in enumerate(outs if isinstance(outs, list) else [outs])
        ]
        with lock, samples_path.open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
            records.extend(rows)

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        _drain(pool.map(run_job, jobs), total=len(jobs), progress=progress)
    ids = {p.id for p in problems}
    return [r for r in records if r["problem_id"] in ids and r["mode"] in settings.modes]


def sample_record(
    problem: Problem, mode: str, k: int, prompt: list[int], out: dict, rule: ExtractRule, replay: KVReplay
) -> dict:
    meta = out["meta_info"]
    stats = meta.get("memento") or {}
    output_ids = out["output_ids"]
    live = replay.trace(mode, prompt, output_ids)
    answer = extract_answer(out["text"], rule)
    score = problem.score(answer)
    finish = meta.get("finish_reason") or {}
    return {
        "problem_id": problem.id,
        "source": problem.source,
        "mode": mode,
        "sample": k,
        "gold": problem.answer,
        "answer": answer,
        "score": score,
        "correct": score >= 1.0,
        "text": out["text"],
        "prompt_tokens": len(prompt),
        "output_tokens": len(output_ids),
        "finish_reason": finish.get("type") if isinstance(finish, dict) else finish,
        "blocks": stats.get("blocks_closed", 0),
        "peak_kv": stats.get("peak_live_kv_tokens", max(live, default=len(prompt))),
        "replay_peak_kv": max(live, default=len(prompt)),
        "kv_area": sum(live),
        "kv_trace": live if k == 0 else None,
        "seconds": meta.get("e2e_latency"),
    }


def _drain(results: Iterable[None], *, total: int, progress: bool) -> None:
    if not progress:
        for _ in results:
            pass
        return
    from tqdm import tqdm

    for _ in tqdm(results, total=total, desc="eval", unit="req"):
        pass


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill: that job runs again
    return records


def _complete_jobs(records: list[dict], samples: int) -> set[tuple[str, str]]:
    counts: dict[tuple[str, str], int] = {}
    for r in records:
        key = (r["problem_id"], r["mode"])
        counts[key] = counts.get(key, 0) + 1
    return {key for key, n in counts.items() if n >= samples}


def _check_same_settings(path: Path, settings: EvalSettings) -> None:
    """Resuming is only meaningful with the same sampling, rule and configuration."""
    current = settings.as_json()
    if path.exists():
        earlier = json.loads(path.read_text())
        if _without_modes(earlier) != _without_modes(current):
            raise ValueError(f"{path.parent} holds a run with other settings ({path}); use another --out")
    path.write_text(json.dumps(current, indent=2))


def _without_modes(settings: dict) -> dict:
    """Modes may be added to a run; everything else must stay."""
    return {k: v for k, v in settings.items() if k != "modes"}
