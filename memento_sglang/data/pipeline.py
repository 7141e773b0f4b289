"""The runner: CoT traces in, Memento training data out, resumable.

Per trace (several traces in flight, `concurrency` threads): split the `<think>` part into
sentences (token counts with the training tokenizer), score the boundaries (LLM), segment
(exact DP), compress / judge / refine each block (LLM), assemble the example and apply the
quality filter. The LLM stages batch their calls, so a trace costs a handful of round trips.

Files in `output_dir`:

- `traces.jsonl`: the checkpoint, one line per finished trace: `status` ok / rejected (with
  `reasons`) / failed (with `error`), every intermediate result (sentences, boundary scores,
  blocks, per-block iterations) and the assembled example (so a different quality filter can
  be applied later without calling a model again);
- `done.txt`: the task ids whose line is flushed (JSON strings, one per line). A trace is done
  only when both are there: a run killed between the two writes redoes that trace, and a
  resumed run first rewrites both files to the done traces, each once;
- `examples.jsonl` and `dataset/` (`datasets.load_from_disk`): derived at the end of every run
  from the kept examples of `traces.jsonl` (`export.write_jsonl`, `export.to_dataset`; no
  `dataset/` while no example is kept);
- `bad_rows.jsonl` (input rows that could not be read, with line numbers), `settings.json`
  (the data-shaping settings; a resume with different ones is refused), `summary.json`, and
  histograms `compression_ratio.png`, `judge_score.png`, `block_tokens.png`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from memento_sglang.config import MementoConfig
from memento_sglang.data.assemble import MementoExample, QualityFilter, assemble
from memento_sglang.data.inputs import BadRow, TraceRecord, read_traces, split_cot
from memento_sglang.data.llm import (
    CallStats,
    EngineTarget,
    LLMFailure,
    OpenAITarget,
    ServerTarget,
    StructuredLLM,
    Target,
    connect,
    served_model_info,
)
from memento_sglang.data.score import WINDOW_BOUNDARIES, score_boundaries
from memento_sglang.data.segment import segment
from memento_sglang.data.sentences import split_sentences
from memento_sglang.data.summarize import SummarizeSettings, summarize_blocks

__all__ = ["Checkpoint", "Distribution", "PipelineConfig", "PipelineSummary", "run_pipeline"]

STAGES = ("split", "score", "segment", "summarize", "assemble")


_SUMMARIZE = SummarizeSettings()


class PipelineConfig(BaseModel):
    """Everything a run needs besides its input and output paths."""

    model_config = ConfigDict(extra="forbid")

    target: Target
    #: the training model's tokenizer (token counts, assembly, export); default: the served model's
    tokenizer: str | None = None
    #: the Memento config the trained model will be served with: the export's attention mask
    #: follows it (mask_delimiters, keep_last_n_blocks, ...), as the server's masked prefill does
    memento_config: MementoConfig = MementoConfig(enable=True, mask_delimiters=False)
    window: int = Field(default=WINDOW_BOUNDARIES, ge=1)
    min_block_tokens: int = Field(default=200, ge=1)
    variance_penalty: float = Field(default=0.5, ge=0)
    max_block_sentences: int | None = Field(default=None, ge=1)
    # the summarise stage's settings, flat for the CLI; their defaults are SummarizeSettings'
    judge_threshold: float = _SUMMARIZE.threshold
    max_iterations: int = Field(default=_SUMMARIZE.max_iterations, ge=1)
    target_ratio: float = _SUMMARIZE.target_ratio
    max_ratio: float = _SUMMARIZE.max_ratio
    memento_cap_ratio: float = _SUMMARIZE.cap_ratio
    feedback_chars: int = Field(default=_SUMMARIZE.feedback_chars, ge=0)
    missing_items: int = Field(default=_SUMMARIZE.missing_items, ge=0)
    missing_item_chars: int = Field(default=_SUMMARIZE.missing_item_chars, ge=0)
    quality: QualityFilter = QualityFilter()
    max_attempts: int = Field(default=3, ge=1)
    temperature: float = 0.0
    retry_temperature: float = 0.7
    #: traces in flight at once
    concurrency: int = Field(default=4, ge=1)
    #: requests in flight per batched round
    max_in_flight: int = Field(default=64, ge=1)
    #: stop after this many failed traces in a row (a dead endpoint, a wrong model); None = never
    stop_after_failures: int | None = 20
    #: on resume, redo the traces that failed before
    retry_failed: bool = False
    plots: bool = True

    def summarize_settings(self) -> SummarizeSettings:
        return SummarizeSettings(
            threshold=self.judge_threshold,
            max_iterations=self.max_iterations,
            target_ratio=self.target_ratio,
            max_ratio=self.max_ratio,
            cap_ratio=self.memento_cap_ratio,
            feedback_chars=self.feedback_chars,
            missing_items=self.missing_items,
            missing_item_chars=self.missing_item_chars,
        )

    def data_settings(self) -> dict[str, Any]:
        """The settings that shape the data: a resumed run must keep them."""
        keep = {
            "tokenizer",
            "memento_config",
            "window",
            "min_block_tokens",
            "variance_penalty",
            "max_block_sentences",
            "judge_threshold",
            "max_iterations",
            "target_ratio",
            "max_ratio",
            "memento_cap_ratio",
            "feedback_chars",
            "missing_items",
            "missing_item_chars",
            "quality",
        }
        return self.model_dump(mode="json", include=keep)


class Distribution(BaseModel):
    count: int = 0
    mean: float | None = None
    median: float | None = None
    min: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution:
        data = [float(v) for v in values]
        if not data:
            return cls()
        return cls(
            count=len(data),
            mean=statistics.fmean(data),
            median=statistics.median(data),
            min=min(data),
            max=max(data),
        )


class PipelineSummary(BaseModel):
    """What a run produced; counts cover every trace in the checkpoint (earlier runs included)."""

    input: str
    output_dir: str
    target: str
    traces: int = 0
    ok: int = 0
    rejected: int = 0
    failed: int = 0
    bad_rows: int = 0
    resumed: int = 0
    processed: int = 0
    stopped_early: bool = False
    examples: int = 0
    export_errors: list[str] = []
    blocks: int = 0
    blocks_per_trace: float | None = None
    compression_ratio: Distribution = Distribution()
    trace_compression_ratio: Distribution = Distribution()
    judge_score: Distribution = Distribution()
    blocks_below_threshold: int = 0
    iterations_per_block: float | None = None
    llm_calls: dict[str, int] = {}
    llm_calls_per_trace: float | None = None
    invalid_responses: int = 0
    seconds_per_stage: dict[str, float] = {}
    seconds_per_trace: dict[str, float] = {}
    wall_seconds: float = 0.0
    rejection_reasons: dict[str, int] = {}
    failure_reasons: dict[str, int] = {}

    def text(self) -> str:
        def fmt(d: Distribution) -> str:
            if not d.count:
                return "-"
            return f"mean {d.mean:.3f}, median {d.median:.3f}, min {d.min:.3f}, max {d.max:.3f} (n={d.count})"

        lines = [
            f"traces: {self.traces} ({self.ok} ok, {self.rejected} rejected, {self.failed} failed); "
            f"this run {self.processed}, resumed {self.resumed}, bad input rows {self.bad_rows}"
            + (" -- stopped early after consecutive failures" if self.stopped_early else ""),
            f"examples written: {self.examples}",
            f"blocks: {self.blocks} ({self.blocks_per_trace or 0:.2f} per trace), "
            f"{self.blocks_below_threshold} below the judge threshold, "
            f"{self.iterations_per_block or 0:.2f} iterations per block",
            f"compression ratio per block: {fmt(self.compression_ratio)}",
            f"judge score per block: {fmt(self.judge_score)}",
            f"LLM calls: {sum(self.llm_calls.values())} ({self.llm_calls_per_trace or 0:.1f} per trace; "
            + ", ".join(f"{k} {v}" for k, v in self.llm_calls.items())
            + f"), {self.invalid_responses} invalid responses",
            "seconds per trace: " + ", ".join(f"{k} {v:.2f}" for k, v in self.seconds_per_trace.items()),
            f"wall time: {self.wall_seconds:.1f} s",
        ]
        for title, reasons in (("rejected", self.rejection_reasons), ("failed", self.failure_reasons)):
            for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
                lines.append(f"  {title}: {n} x {reason}")
        return "\n".join(lines)


# ------------------------------------------------------------------------ checkpoint


class Checkpoint:
    """`traces.jsonl` + `done.txt` in `output_dir`; see the module docstring for the protocol."""

    def __init__(self, output_dir: Path) -> None:
        self.traces_path = output_dir / "traces.jsonl"
        self.done_path = output_dir / "done.txt"
        self._lock = threading.Lock()

    def load(
        self, *, retry_failed: bool = False, redo_unreachable: bool = False
    ) -> dict[str, dict[str, Any]]:
        """The finished traces by task id; rewrites both files to exactly those (each once).

        `retry_failed` drops every failed trace (it is redone); `redo_unreachable` only those
        that failed because the endpoint gave no response.
        """
        done = set(self._done_ids())
        lines = self._lines(self.traces_path)
        records: dict[str, dict[str, Any]] = {}
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            task_id = record.get("task_id") if isinstance(record, dict) else None
            failed = record.get("status") == "failed"
            redo = failed and (retry_failed or (redo_unreachable and bool(record.get("unreachable"))))
            if task_id in done and task_id not in records and not redo:
                records[task_id] = record
        kept = [json.dumps(r) for r in records.values()]
        if kept != lines:
            _replace(self.traces_path, kept)
        marks = [json.dumps(task_id) for task_id in records]
        if marks != self._lines(self.done_path):
            _replace(self.done_path, marks)
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Flush the trace's line, then its done mark (in that order: see the module docstring)."""
        with self._lock:
            for path, text in (
                (self.traces_path, json.dumps(record)),
                (self.done_path, json.dumps(record["task_id"])),
            ):
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(text + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())

    def _done_ids(self) -> list[str]:
        out = []
        for line in self._lines(self.done_path):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, str):
                out.append(value)
        return out

    @staticmethod
    def _lines(path: Path) -> list[str]:
        if not path.exists():
            return []
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _replace(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    if path.exists():
        before = json.loads(path.read_text())
        if before != settings:
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            raise ValueError(
                f"{path.parent} holds traces made with other settings ({', '.join(changed)}); "
                "use a new output directory, or the same settings to resume"
            )
    else:
        path.write_text(json.dumps(settings, indent=2) + "\n")


# ----------------------------------------------------------------------- one trace


class _Worker:
    """Runs the stages of one trace; shared by the threads (the tokenizer behind a lock)."""

    def __init__(self, llm: StructuredLLM, tokenizer: Any, config: PipelineConfig) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.config = config
        self.settings = config.summarize_settings()
        self._tok_lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        with self._tok_lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def run(self, trace: TraceRecord) -> dict[str, Any]:
        """The trace's checkpoint record; a failure is recorded, never raised."""
        config = self.config
        stats = CallStats()
        seconds: dict[str, float] = {}
        record: dict[str, Any] = {
            "task_id": trace.task_id,
            "status": "failed",
            "reasons": [],
            "error": None,
            "problem": trace.problem,
            "metadata": trace.metadata,
        }
        clock = time.monotonic()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.monotonic()
            seconds[stage] = round(now - clock, 4)
            clock = now

        try:
            parts = split_cot(trace.cot)
            sentences = split_sentences(parts.reasoning, self.count_tokens)
            tokens = [self.count_tokens(s) for s in sentences]
            record.update(
                think_prefix=parts.think_prefix,
                answer=parts.answer,
                sentences=sentences,
                sentence_tokens=tokens,
            )
            lap("split")
            scored = score_boundaries(self.llm, sentences, window=config.window, stats=stats)
            record.update(boundary_scores=scored.scores, windows=scored.windows, pinned=scored.pinned)
            lap("score")
            ranges = segment(
                tokens,
                scored.scores,
                min_block_tokens=config.min_block_tokens,
                variance_penalty=config.variance_penalty,
                max_block_sentences=config.max_block_sentences,
            )
            blocks = ["".join(sentences[first : last + 1]) for first, last in ranges]
            record.update(
                blocks=[list(r) for r in ranges], block_tokens=[sum(tokens[a : b + 1]) for a, b in ranges]
            )
            lap("segment")
            summaries = summarize_blocks(
                self.llm,
                problem=trace.problem,
                blocks=blocks,
                count_tokens=self.count_tokens,
                settings=self.settings,
                stats=stats,
            )
            mementos = [s.memento for s in summaries]
            scores = [float(s.score) for s in summaries]
            record.update(
                mementos=mementos, judge_scores=scores, summaries=[s.model_dump() for s in summaries]
            )
            lap("summarize")
            record.update(self._assemble(trace, parts.think_prefix, blocks, mementos, parts.answer, scores))
            lap("assemble")
        except LLMFailure as e:
            record["error"] = str(e)
            record["unreachable"] = e.transport  # the endpoint was down: a rerun redoes it
        except Exception as e:  # a bug or a broken input must cost one trace, not the run
            where = traceback.extract_tb(e.__traceback__)[-1]
            record["error"] = f"{type(e).__name__}: {e} ({Path(where.filename).name}:{where.lineno})"
        record["llm"] = stats.as_json()
        record["seconds"] = seconds
        return record

    def _assemble(
        self,
        trace: TraceRecord,
        think_prefix: str,
        blocks: list[str],
        mementos: list[str],
        answer: str,
        scores: list[float],
    ) -> dict[str, Any]:
        from memento_sglang.data.export import example_features

        try:
            with self._tok_lock:
                example = assemble(
                    task_id=trace.task_id,
                    problem=trace.problem,
                    think_prefix=think_prefix,
                    blocks=blocks,
                    mementos=mementos,
                    answer=answer,
                    tokenizer=self.tokenizer,
                    judge_scores=scores,
                )
            with self._tok_lock:  # the export must take it too: checked here, not after the run
                example_features(example, self.config.memento_config, tokenizer=self.tokenizer)
        except ValueError as e:
            return {"status": "rejected", "reasons": [f"assembly: {e}"], "example": None}
        reasons = self.config.quality.reasons(example)
        return {
            "status": "rejected" if reasons else "ok",
            "reasons": reasons,
            "example": example.model_dump(),
        }


# --------------------------------------------------------------------------- the run


def run_pipeline(
    input_path: str | Path,
    output_dir: str | Path,
    config: PipelineConfig,
    *,
    llm: StructuredLLM | None = None,
    tokenizer: Any = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> PipelineSummary:
    """Process every trace of `input_path` not finished in `output_dir`; return the run's summary.

    `llm` / `tokenizer`: use these instead of connecting to `config.target` / loading
    `config.tokenizer` (tests, or several runs on one engine).
    """
    started = time.monotonic()
    say = log or (lambda text: print(text, file=sys.stderr))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out / "settings.json", config.data_settings())
    traces, bad = _read_input(Path(input_path), out, say)
    checkpoint = Checkpoint(out)
    finished = checkpoint.load(retry_failed=config.retry_failed, redo_unreachable=True)
    todo = [t for t in traces if t.task_id not in finished]
    resumed = sum(1 for t in traces if t.task_id in finished)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(config))
    own_llm = llm is None
    stopped, processed = False, 0
    if todo:
        if llm is None:
            llm = StructuredLLM(
                connect(config.target, max_in_flight=config.max_in_flight),
                max_attempts=config.max_attempts,
                temperature=config.temperature,
                retry_temperature=config.retry_temperature,
            )
        try:
            processed, stopped = _process(
                todo, _Worker(llm, tokenizer, config), checkpoint, config, progress, say
            )
        finally:
            if own_llm:
                llm.close()
    records = checkpoint.load()
    order = {t.task_id: i for i, t in enumerate(traces)}
    ordered = sorted(records.values(), key=lambda r: order.get(r["task_id"], len(order)))
    examples, export_errors = _export(ordered, out, tokenizer, config.memento_config, progress)
    summary = _summary(ordered, config, input_path=str(input_path), out=out, bad_rows=len(bad))
    summary = summary.model_copy(
        update={
            "resumed": resumed,
            "processed": processed,
            "stopped_early": stopped,
            "examples": examples,
            "export_errors": export_errors,
            "wall_seconds": round(time.monotonic() - started, 3),
        }
    )
    (out / "summary.json").write_text(summary.model_dump_json(indent=2) + "\n")
    if config.plots:
        write_histograms(ordered, out)
    say(summary.text())
    return summary


def tokenizer_path(config: PipelineConfig) -> str:
    """The training tokenizer: `config.tokenizer`, else the served (server) or loaded (engine) model's."""
    if config.tokenizer:
        return config.tokenizer
    target = config.target
    if isinstance(target, ServerTarget):
        info = served_model_info(target.url)
        return info.get("tokenizer_path") or info["model_path"]
    if isinstance(target, EngineTarget):
        return target.model_path
    assert isinstance(target, OpenAITarget)
    raise ValueError("an OpenAI-compatible target needs the training tokenizer (--tokenizer PATH)")


def target_name(target: ServerTarget | EngineTarget | OpenAITarget) -> str:
    if isinstance(target, ServerTarget):
        return f"server {target.url} ({target.constraint})"
    if isinstance(target, EngineTarget):
        return f"engine {target.model_path} ({target.constraint})"
    return f"openai {target.model} at {target.url} ({target.constraint})"


def _read_input(path: Path, out: Path, say: Callable[[str], None]) -> tuple[list[TraceRecord], list[BadRow]]:
    traces: list[TraceRecord] = []
    bad: list[BadRow] = []
    for item in read_traces(path):
        (bad if isinstance(item, BadRow) else traces).append(item)  # type: ignore[arg-type]
    for row in bad:
        say(f"{path}:{row.line}: skipped: {row.reason}")
    _replace(out / "bad_rows.jsonl", [json.dumps({"line": b.line, "reason": b.reason}) for b in bad])
    return traces, bad


def _process(
    todo: list[TraceRecord],
    worker: _Worker,
    checkpoint: Checkpoint,
    config: PipelineConfig,
    progress: bool,
    say: Callable[[str], None],
) -> tuple[int, bool]:
    """Run `todo` with `config.concurrency` traces in flight; (traces finished, stopped early)."""
    from tqdm import tqdm

    counts: Counter[str] = Counter()
    in_a_row = 0
    stopped = False
    bar = tqdm(total=len(todo), desc="traces", unit="trace", disable=not progress, file=sys.stderr)
    queue = iter(todo)
    with ThreadPoolExecutor(config.concurrency, thread_name_prefix="trace") as pool:
        running: set[Future] = set()

        def refill() -> None:
            while not stopped and len(running) < config.concurrency:
                trace = next(queue, None)
                if trace is None:
                    return
                running.add(pool.submit(worker.run, trace))

        refill()
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                running.discard(future)
                record = future.result()
                checkpoint.append(record)
                counts[record["status"]] += 1
                in_a_row = in_a_row + 1 if record["status"] == "failed" else 0
                if record["status"] == "failed":
                    say(f"trace {record['task_id']} failed: {record['error']}")
                bar.update(1)
                bar.set_postfix(ok=counts["ok"], rejected=counts["rejected"], failed=counts["failed"])
                limit = config.stop_after_failures
                if limit is not None and in_a_row >= limit and not stopped:
                    stopped = True
                    say(f"stopping: {in_a_row} traces failed in a row (the traces in flight finish)")
            refill()
    bar.close()
    return sum(counts.values()), stopped


# --------------------------------------------------------------------------- outputs


def _export(
    records: list[dict[str, Any]], out: Path, tokenizer: Any, memento_config: MementoConfig, progress: bool
) -> tuple[int, list[str]]:
    """From the kept examples: `examples.jsonl` (text and ids), `features.jsonl` and `dataset/`
    (the Stage-2 SFT features); (examples written, errors)."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    from memento_sglang.data.export import example_features, to_dataset, write_jsonl

    examples = [MementoExample.model_validate(r["example"]) for r in records if r["status"] == "ok"]
    features, exported, errors = [], [], []
    for example in examples:
        try:
            features.append(example_features(example, memento_config, tokenizer=tokenizer))
            exported.append(example)
        except ValueError as e:  # checked per trace already: only a changed tokenizer gets here
            errors.append(f"{example.task_id}: {e}")
    count = write_jsonl(exported, out / "examples.jsonl")
    write_jsonl(features, out / "features.jsonl")
    dataset_dir = out / "dataset"
    if dataset_dir.exists():
        shutil.rmtree(dataset_dir)
    if not features:  # no dataset without rows (`to_dataset([])` cannot build one)
        return count, errors
    quiet = not progress and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        to_dataset(features).save_to_disk(str(dataset_dir))
    finally:
        if quiet:
            enable_progress_bars()
    return count, errors


def _reason_kind(reason: str) -> str:
    """A reason with its numbers blanked, so equal causes count together."""
    return re.sub(r"\d+(?:\.\d+)?", "N", reason)[:160]


def _summary(
    records: list[dict[str, Any]], config: PipelineConfig, *, input_path: str, out: Path, bad_rows: int
) -> PipelineSummary:
    status = Counter(r["status"] for r in records)
    blocks = [s for r in records for s in (r.get("summaries") or [])]
    done = [r for r in records if r.get("summaries")]
    calls: Counter[str] = Counter()
    invalid = 0
    for r in records:
        calls.update(r.get("llm", {}).get("calls", {}))
        invalid += sum(r.get("llm", {}).get("invalid", {}).values())
    stage_seconds = {s: round(sum(r.get("seconds", {}).get(s, 0.0) for r in records), 3) for s in STAGES}
    n = max(len(records), 1)
    examples = [r["example"] for r in records if r.get("example")]
    return PipelineSummary(
        input=input_path,
        output_dir=str(out),
        target=target_name(config.target),
        traces=len(records),
        ok=status["ok"],
        rejected=status["rejected"],
        failed=status["failed"],
        bad_rows=bad_rows,
        blocks=len(blocks),
        blocks_per_trace=len(blocks) / len(done) if done else None,
        compression_ratio=Distribution.of(b["compression_ratio"] for b in blocks),
        trace_compression_ratio=Distribution.of(e["compression_ratio"] for e in examples),
        judge_score=Distribution.of(b["score"] for b in blocks),
        blocks_below_threshold=sum(1 for b in blocks if b["score"] < config.judge_threshold),
        iterations_per_block=sum(len(b["iterations"]) for b in blocks) / len(blocks) if blocks else None,
        llm_calls=dict(calls),
        llm_calls_per_trace=sum(calls.values()) / n if records else None,
        invalid_responses=invalid,
        seconds_per_stage=stage_seconds,
        seconds_per_trace={s: round(v / n, 3) for s, v in stage_seconds.items()},
        rejection_reasons=dict(
            Counter(_reason_kind(x) for r in records if r["status"] == "rejected" for x in r["reasons"])
        ),
        failure_reasons=dict(
            Counter(_reason_kind(r["error"] or "") for r in records if r["status"] == "failed")
        ),
    )


def write_histograms(records: list[dict[str, Any]], out: Path) -> list[Path]:
    """Per-block histograms of the final compression ratio, judge score and block size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [s for r in records for s in (r.get("summaries") or [])]
    figures: dict[str, tuple[list[float], str, int | list[int]]] = {
        "compression_ratio.png": (
            [b["compression_ratio"] for b in blocks],
            "memento tokens / block tokens",
            30,
        ),
        "judge_score.png": ([b["score"] for b in blocks], "final judge score (0-10)", list(range(12))),
        "block_tokens.png": ([b["block_tokens"] for b in blocks], "block tokens", 30),
    }
    written = []
    for name, (values, label, bins) in figures.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(values, bins=bins, color="#4477aa", edgecolor="white")
        ax.set_xlabel(label)
        ax.set_ylabel("blocks")
        ax.set_title(f"{label} ({len(values)} blocks)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written
