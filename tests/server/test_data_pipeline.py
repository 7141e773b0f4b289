"""The data pipeline end to end on a real CPU server (the embedded tiny model writes noise, so the
checks are structural): every trace finished or reported, every answer within its grammar and
schema, exact window counts, blocks covering the sentences, parseable examples and exports,
resume; the OpenAI-compatible path and the in-process engine (through the CLI)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import requests
from pydantic import ValidationError

from memento_sglang.data.assemble import MementoExample, QualityFilter
from memento_sglang.data.export import features_from_row
from memento_sglang.data.inputs import read_traces, split_cot
from memento_sglang.data.llm import (
    Ask,
    Call,
    OpenAICompleter,
    ServerTarget,
    StructuredLLM,
    connect,
    schema_regex,
)
from memento_sglang.data.pipeline import PipelineConfig, run_pipeline
from memento_sglang.data.score import score_boundaries, scores_model, window_prompt
from memento_sglang.data.sentences import split_sentences
from memento_sglang.frontend.trace import MementoTrace
from memento_sglang.models.tiny import tiny_model_path

pytestmark = pytest.mark.server
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cot_sample.jsonl"

MAX_ITERATIONS = 2


class Recording:
    """The real completer, with every call and its raw answer kept."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.description = inner.description
        self.calls: list[tuple[Call, str | BaseException]] = []
        self._lock = threading.Lock()

    def complete(self, calls):
        outs = self.inner.complete(calls)
        with self._lock:
            self.calls.extend(zip(calls, outs, strict=True))
        return outs

    def close(self) -> None:
        self.inner.close()


def config(url: str) -> PipelineConfig:
    return PipelineConfig(
        target=ServerTarget(url=url),
        min_block_tokens=100,
        max_iterations=MAX_ITERATIONS,
        feedback_chars=40,
        missing_items=1,
        missing_item_chars=24,
        quality=QualityFilter(min_judge_score=None, max_compression_ratio=None),  # noise passes
        concurrency=3,
    )


def run(url: str, out, tokenizer) -> tuple[Recording, object]:
    recording = Recording(connect(ServerTarget(url=url)))
    summary = run_pipeline(
        FIXTURE, out, config(url), llm=StructuredLLM(recording), tokenizer=tokenizer, progress=False
    )
    return recording, summary


@pytest.fixture(scope="module")
def first_run(default_server, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "out"
    recording, summary = run(default_server.url, out, tokenizer)
    records = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    return out, recording, summary, records


def test_every_trace_finishes_with_exact_windows_and_covering_blocks(first_run, tokenizer):
    out, recording, summary, records = first_run
    inputs = {t.task_id: t for t in read_traces(FIXTURE)}
    assert sorted(r["task_id"] for r in records) == sorted(inputs) and summary.traces == 3
    assert summary.ok + summary.rejected + summary.failed == 3 and summary.ok >= 1
    for r in records:
        assert r["status"] in ("ok", "rejected", "failed")
        if r["status"] == "failed":
            assert r["error"]
            continue
        n = len(r["sentences"])
        reasoning = split_cot(inputs[r["task_id"]].cot).reasoning
        assert "".join(r["sentences"]) == reasoning
        assert r["sentences"] == split_sentences(reasoning, lambda t: len(tokenizer.encode(t)))
        assert len(r["boundary_scores"]) == n - 1 and set(r["boundary_scores"]) <= {0.0, 1.0, 2.0, 3.0}
        starts = [start for start, _ in r["windows"]]
        assert starts == [sum(c for _, c in r["windows"][:k]) for k in range(len(starts))]
        assert sum(c for _, c in r["windows"]) == n - 1 and all(1 <= c <= 16 for _, c in r["windows"])
        blocks = r["blocks"]
        assert blocks[0][0] == 0 and blocks[-1][1] == n - 1
        assert all(b[0] == a[1] + 1 for a, b in zip(blocks, blocks[1:], strict=False))
        texts = ["".join(r["sentences"][a : b + 1]) for a, b in blocks]
        assert "".join(texts) == reasoning
        assert len(r["mementos"]) == len(blocks) and all(m.strip() for m in r["mementos"])
        for s in r["summaries"]:
            assert 1 <= len(s["iterations"]) <= MAX_ITERATIONS and 0 <= s["score"] <= 10
        if r["example"] is None:  # assembly refused it: the reason says why
            assert r["status"] == "rejected" and r["reasons"][0].startswith("assembly:")
        else:
            trace = MementoTrace.from_text(MementoExample.model_validate(r["example"]).text)
            assert [b.text for b in trace.blocks] == texts and trace.mementos == r["mementos"]
            assert trace.answer == r["answer"]
        calls = r["llm"]["calls"]
        assert calls["score"] >= len(r["windows"]) and calls["compress"] >= len(blocks)


def test_every_answer_kept_to_its_grammar_and_window_count(first_run):
    _, recording, summary, records = first_run
    assert recording.calls
    asked, invalid = Counter(), 0
    for call, raw in recording.calls:
        assert isinstance(raw, str), raw
        schema = call.answer.model_json_schema()
        # what the server enforced: the regex SGLang got, with its bounds (xgrammar)
        assert re.fullmatch(schema_regex(schema).regex, raw), (call.answer.__name__, raw[:200])
        if call.answer.__name__.startswith("BoundaryScores"):
            count = schema["properties"]["scores"]["maxItems"]
            assert len(json.loads(raw)["scores"]) == count
            asked[count] += 1
        try:
            call.answer.model_validate_json(raw)
        except ValidationError:
            invalid += 1  # only a validator beyond the grammar (an all-blank memento) can refuse
    windows = Counter(c for r in records if "windows" in r for _, c in r["windows"])
    assert not windows - asked  # every window was asked with its own count
    assert sum(sum(r["llm"]["calls"].values()) for r in records) == len(recording.calls)
    assert summary.invalid_responses == invalid


def test_exports_and_summary(first_run, tokenizer):
    import datasets

    out, _, summary, records = first_run
    examples = [
        MementoExample.model_validate_json(x) for x in (out / "examples.jsonl").read_text().splitlines()
    ]
    kept = [r["task_id"] for r in records if r["status"] == "ok"]
    assert sorted(e.task_id for e in examples) == sorted(kept) and summary.examples == len(kept)
    dataset = datasets.load_from_disk(str(out / "dataset"))
    assert dataset.num_rows == len(examples)
    for row, example in zip(dataset, examples, strict=True):
        features = features_from_row(row)
        assert features.input_ids == example.prompt_ids + example.completion_ids
        assert (
            len(features.hidden_spans) >= example.num_blocks - 1
        )  # each closed block hidden after its memento
    saved = json.loads((out / "summary.json").read_text())
    assert saved["traces"] == 3 and saved["llm_calls_per_trace"] > 0 and saved["judge_score"]["count"] > 0
    assert set(saved["seconds_per_stage"]) == {"split", "score", "segment", "summarize", "assemble"}
    for name in ("compression_ratio.png", "judge_score.png", "block_tokens.png"):
        assert (out / name).stat().st_size > 0


def test_resume_redoes_only_the_removed_trace(first_run, default_server, tokenizer, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    lines = (out / "traces.jsonl").read_text().splitlines()
    removed = json.loads(lines[-1])
    (out / "traces.jsonl").write_text("".join(line + "\n" for line in lines[:-1]))
    marks = (out / "done.txt").read_text().splitlines()
    (out / "done.txt").write_text("".join(m + "\n" for m in marks if json.loads(m) != removed["task_id"]))

    recording, summary = run(default_server.url, out, tokenizer)
    assert (summary.processed, summary.resumed, summary.traces) == (1, 2, 3)
    problem = removed["problem"]
    sentences = removed["sentences"]
    assert recording.calls
    for call, _ in recording.calls:  # every call was about the removed trace
        user = call.prompt.user
        assert problem in user or any(s.strip() in user for s in sentences), user[:300]
    ids = [json.loads(x)["task_id"] for x in (out / "traces.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 3 and ids[-1] == removed["task_id"]
    assert sorted(json.loads(m) for m in (out / "done.txt").read_text().splitlines()) == sorted(ids)
    ok = sum(1 for x in (out / "traces.jsonl").read_text().splitlines() if json.loads(x)["status"] == "ok")
    assert len((out / "examples.jsonl").read_text().splitlines()) == ok


def test_openai_compatible_path(default_server, tokenizer):
    trace = next(iter(read_traces(FIXTURE)))
    sentences = split_sentences(split_cot(trace.cot).reasoning, lambda t: len(tokenizer.encode(t)))
    base = f"{default_server.url}/v1"
    model = requests.get(f"{base}/models", timeout=30).json()["data"][0]["id"]

    # SGLang's own `regex` field through /v1/chat/completions: the scoring stage as it runs
    regex_llm = StructuredLLM(OpenAICompleter(base, model, constraint="regex"))
    scored = score_boundaries(regex_llm, sentences)
    assert len(scored.scores) == len(sentences) - 1

    # a JSON-schema response_format, as any OpenAI-compatible endpoint takes it: the server
    # constrains the answer; this server's xgrammar allows any whitespace, which the noise model
    # may pad until max_tokens: then the failure is reported, not raised
    schema_llm = StructuredLLM(OpenAICompleter(base, model), max_attempts=1)
    [answer] = schema_llm.ask([Ask(window_prompt(sentences, range(0, 3)), scores_model(3))], stage="score")
    assert re.fullmatch(r'\s*\{[\s"scores:\[\],0-3}]*', answer.raw), answer.raw[
        :200
    ]  # JSON of this schema so far
    assert answer.ok == (answer.value is not None and len(answer.value.scores) == 3)
    assert answer.ok or (answer.attempts == 1 and answer.errors)

    # the same JSON schema through the front end (sgl.gen(json_schema=...)) on target (a)
    front = StructuredLLM(
        connect(ServerTarget(url=default_server.url, constraint="json_schema")), max_attempts=1
    )
    [answer] = front.ask([Ask(window_prompt(sentences, range(0, 3)), scores_model(3))], stage="score")
    assert answer.raw.lstrip().startswith("{") and (answer.ok or answer.errors)


def test_engine_target_through_the_cli(tmp_path):
    """(b) an in-process sgl.Engine, started by `python -m memento_sglang.data.main --model-path`
    (SGLang spawns processes: a fresh interpreter, as a user runs it)."""
    source = tmp_path / "one.jsonl"
    source.write_text(FIXTURE.read_text().splitlines()[0] + "\n")
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "memento_sglang.data.main",
        str(source),
        "--out",
        str(out),
        "--model-path",
        str(tiny_model_path()),
        "--min-block-tokens",
        "150",
        "--max-iterations",
        "1",
        "--feedback-chars",
        "24",
        "--missing-items",
        "1",
        "--missing-item-chars",
        "16",
        "--min-judge-score",
        "-1",
        "--max-compression-ratio",
        "-1",
        "--no-progress",
        "--no-plots",
    ]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [record] = [json.loads(x) for x in (out / "traces.jsonl").read_text().splitlines()]
    assert record["status"] in ("ok", "rejected"), record.get("error")
    assert len(record["boundary_scores"]) == len(record["sentences"]) - 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["traces"] == 1 and summary["target"].startswith("engine")
