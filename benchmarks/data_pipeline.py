"""Data pipeline throughput: traces per minute and LLM calls per trace, stages timed.

One CPU server on SmolLM2-135M-Instruct (the demo's real model; `--model-path` for
another) serves every LLM stage of `memento-sglang data` (boundary scoring,
compression, judging, refinement) on the committed sample traces
(`tests/fixtures/cot_sample.jsonl`), repeated `--repeat` times under fresh task ids.
Output: the pipeline's own summary (counts, compression ratios, judge scores, LLM
calls, seconds per stage) plus traces per minute.

    python -m benchmarks data_pipeline --repeat 4 --concurrency 4
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
import time
from pathlib import Path

from benchmarks._common import machine
from memento_sglang.data.llm import ServerTarget
from memento_sglang.data.pipeline import PipelineConfig, run_pipeline
from tests.support.server import ServerProcess, ServerSpec

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "cot_sample.jsonl"


def repeated_input(source: Path, repeat: int, path: Path) -> int:
    """`source` rows `repeat` times, each copy under its own task id."""
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    with path.open("w") as out:
        for copy in range(repeat):
            for row in rows:
                out.write(json.dumps({**row, "task_id": f"{row['task_id']}-{copy}"}) + "\n")
    return repeat * len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, default=SAMPLE)
    parser.add_argument("--repeat", type=int, default=4, help="copies of the input traces")
    parser.add_argument("--concurrency", type=int, default=4, help="traces in flight at once")
    parser.add_argument("--min-block-tokens", type=int, default=60, help="the sample traces are short")
    parser.add_argument("--model-path", type=Path, default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--server-args", default="", help="extra SGLang flags, as one string")
    parser.add_argument("--out", type=Path, default=Path("artifacts/data_pipeline.json"))
    args = parser.parse_args()

    from memento_sglang.models.smollm2 import smollm2_model_path

    model = args.model_path or smollm2_model_path()
    spec = ServerSpec("data", tuple(shlex.split(args.server_args)))
    server = ServerProcess(spec, model)
    server.start()
    try:
        server.wait_ready()
        with tempfile.TemporaryDirectory() as tmp:
            traces = repeated_input(args.input, args.repeat, Path(tmp) / "input.jsonl")
            config = PipelineConfig(
                target=ServerTarget(url=server.url),
                min_block_tokens=args.min_block_tokens,
                concurrency=args.concurrency,
                plots=False,
            )
            start = time.perf_counter()
            summary = run_pipeline(Path(tmp) / "input.jsonl", Path(tmp) / "out", config)
            wall = time.perf_counter() - start
    finally:
        server.stop()
    result = {
        "machine": machine(),
        "model": str(model),
        "traces": traces,
        "concurrency": args.concurrency,
        "traces_per_minute": 60 * summary.traces / wall,
        "wall_s": wall,
        "summary": summary.model_dump(mode="json"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{summary.traces} traces in {wall:.1f} s: {result['traces_per_minute']:.2f} traces/min, "
          f"{summary.llm_calls_per_trace or 0:.1f} LLM calls per trace")  # fmt: skip


if __name__ == "__main__":
    main()
