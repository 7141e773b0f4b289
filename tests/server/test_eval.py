"""`memento-sglang eval` against a real server: every mode, KV figures, report, resume."""

from __future__ import annotations

import json

import pytest

from memento_sglang.eval import EvalSettings, HttpTarget, Sampling, Structure, load_problems, run_eval
from memento_sglang.eval.report import write_report

pytestmark = pytest.mark.server

MODES = ("memento", "no_eviction", "restart", "stock")


class CountingTarget(HttpTarget):
    """The real server; counts the requests that reached it."""

    calls = 0

    def generate(self, body: dict):
        self.calls += 1
        return super().generate(body)


def settings() -> EvalSettings:
    return EvalSettings(
        modes=MODES,
        sampling=Sampling(temperature=0.7, top_p=0.95, max_new_tokens=120, samples=2, seed=5),
        rule="boxed",
        memento_config={"enable": True, "mask_delimiters": False},  # the default server's
        structure=Structure(max_blocks=3, block_tokens=12, memento_tokens=4, answer_tokens=8),
    )


def test_every_mode_with_kv_from_the_servers_own_stats(default_server, tokenizer, tmp_path):
    problems = load_problems("rg:basic_arithmetic:3", seed=1)
    target = CountingTarget(default_server.url)
    records = run_eval(problems[:2], target, tokenizer, settings(), tmp_path, progress=False)
    assert len(records) == 2 * len(MODES) * 2 and target.calls == 2 * len(MODES)
    by_mode = {m: [r for r in records if r["mode"] == m] for m in MODES}
    for r in records:
        assert r["replay_peak_kv"] == r["peak_kv"], r  # the replayed sawtooth is the server's
        assert r["kv_area"] > 0 and r["output_tokens"] > 0 and 0.0 <= r["score"] <= 1.0
    assert all(r["blocks"] >= 1 for m in ("memento", "no_eviction", "restart") for r in by_mode[m])
    evicted = sum(r["peak_kv"] for r in by_mode["memento"])
    assert evicted < sum(r["peak_kv"] for r in by_mode["no_eviction"])

    # the sawtooth (first sample of each problem): eviction drops the live KV, stock never does
    # (areas across modes are not compared: sampled outputs differ in length between modes)
    def drops(trace: list[int]) -> bool:
        return any(b < a for a, b in zip(trace, trace[1:], strict=False))

    memento_traces = [r["kv_trace"] for r in by_mode["memento"] if r["kv_trace"]]
    stock_traces = [r["kv_trace"] for r in by_mode["stock"] if r["kv_trace"]]
    assert memento_traces and all(drops(t) for t in memento_traces)
    assert stock_traces and not any(drops(t) for t in stock_traces)

    summary = write_report(records, MODES, tmp_path)
    assert set(summary["modes"]) == set(MODES) and summary["reference_mode"] == "no_eviction"
    assert summary["modes"]["memento"]["peak_kv_vs_reference"] < 1.0
    assert {"memento - no_eviction", "restart - no_eviction", "stock - no_eviction"} == set(summary["paired"])
    for name in ("summary.json", "summary.md", "accuracy_vs_kv.png", "kv_sawtooth.png"):
        assert (tmp_path / name).stat().st_size > 0

    # resume: finished jobs are not sent again; a job cut by a kill is
    samples = tmp_path / "samples.jsonl"
    lines = samples.read_text().splitlines()
    cut = json.loads(lines[-1])
    samples.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    again = CountingTarget(default_server.url)
    records = run_eval(problems, again, tokenizer, settings(), tmp_path, progress=False)
    assert again.calls == len(MODES) + 1  # the third problem, and the cut job
    assert len(records) == 3 * len(MODES) * 2
    assert sum(1 for r in records if (r["problem_id"], r["mode"]) == (cut["problem_id"], cut["mode"])) == 2
    other = EvalSettings(**{**settings().__dict__, "rule": "last_line"})
    with pytest.raises(ValueError, match="other settings"):
        run_eval(problems, again, tokenizer, other, tmp_path, progress=False)
