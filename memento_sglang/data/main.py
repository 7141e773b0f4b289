"""`memento-sglang data`: chain-of-thought traces -> Memento training data (resumable)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from memento_sglang.config import MementoConfig
from memento_sglang.data.assemble import QualityFilter
from memento_sglang.data.llm import EngineTarget, OpenAITarget, ServerTarget
from memento_sglang.data.pipeline import PipelineConfig, PipelineSummary, run_pipeline

__all__ = ["add_parser", "config_from_args", "main", "parser"]

EPILOG = """\
examples:
  memento-sglang data traces.jsonl --out data/run1 --url http://127.0.0.1:30000
  memento-sglang data traces.jsonl --out data/run1 --model-path Qwen/Qwen3-8B
  memento-sglang data traces.jsonl --out data/run1 --openai-url https://api.openai.com/v1 \\
      --openai-model gpt-4o --tokenizer path/to/student-with-memento-tokens
Rerun the same command to resume: finished traces are not redone."""


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="JSONL of traces (`cot` = <think>...</think>answer, or ShareGPT)")
    p.add_argument("--out", type=Path, required=True, help="output directory (resumed when it exists)")
    p.add_argument(
        "--memento-config",
        default='{"enable": true, "mask_delimiters": false}',
        help="the Memento config the trained model will be served with (JSON, as the server's "
        "--memento-config): the exported attention mask follows it",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running SGLang server (ours or stock)")
    where.add_argument("--model-path", help="start an in-process sgl.Engine on this model")
    where.add_argument("--openai-url", help="an OpenAI-compatible base URL (…/v1)")
    p.add_argument("--openai-model", help="model name for --openai-url")
    p.add_argument(
        "--openai-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key"
    )
    p.add_argument("--openai-strict", action="store_true", help="send json_schema with strict=true")
    p.add_argument("--openai-extra", default="{}", help="JSON merged into every chat request")
    p.add_argument(
        "--constraint",
        choices=("regex", "json_schema"),
        help="how answers are constrained: SGLang targets default to regex (see memento_sglang/data/llm.py), "
        "--openai-url to json_schema (regex: SGLang's own `regex` field)",
    )
    p.add_argument("--engine-args", default="{}", help="JSON keyword arguments for the engine (--model-path)")
    p.add_argument("--tokenizer", help="training tokenizer (default: the served model's)")
    p.add_argument("--window", type=int, default=16, help="boundaries per scoring window")
    p.add_argument("--min-block-tokens", type=int, default=200)
    p.add_argument("--variance-penalty", type=float, default=0.5)
    p.add_argument("--max-block-sentences", type=int)
    p.add_argument("--judge-threshold", type=float, default=8.0, help="refine mementos scored below this")
    p.add_argument("--max-iterations", type=int, default=2, help="compress/refine + judge rounds per block")
    p.add_argument("--feedback-chars", type=int, default=600, help="cap on the judge's feedback")
    p.add_argument("--missing-items", type=int, default=5, help="cap on the judge's list of missing items")
    p.add_argument("--missing-item-chars", type=int, default=160, help="cap on each missing item")
    p.add_argument("--min-judge-score", type=float, default=8.0, help="quality filter; negative = off")
    p.add_argument("--max-compression-ratio", type=float, default=0.5, help="quality filter; negative = off")
    p.add_argument("--min-blocks", type=int, default=1, help="quality filter")
    p.add_argument("--max-attempts", type=int, default=3, help="tries per LLM call before the trace fails")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--concurrency", type=int, default=4, help="traces in flight")
    p.add_argument("--max-in-flight", type=int, default=64, help="requests in flight per batched round")
    p.add_argument("--stop-after-failures", type=int, default=20, help="0 = never stop")
    p.add_argument("--retry-failed", action="store_true", help="redo traces that failed in an earlier run")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memento-sglang data",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    return p


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `data` on an argparse subparsers object (`main` reads the namespace it gives)."""
    p = subparsers.add_parser(
        "data",
        help="CoT traces -> Memento training data",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=main)
    return p


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    target: ServerTarget | EngineTarget | OpenAITarget
    if args.url:
        target = ServerTarget(url=args.url, constraint=args.constraint or "regex")
    elif args.model_path:
        target = EngineTarget(
            model_path=args.model_path,
            engine_args=json.loads(args.engine_args),
            constraint=args.constraint or "regex",
        )
    else:
        if not args.openai_model:
            raise SystemExit("--openai-url needs --openai-model")
        target = OpenAITarget(
            url=args.openai_url,
            model=args.openai_model,
            api_key_env=args.openai_key_env,
            strict=args.openai_strict,
            extra_body=json.loads(args.openai_extra),
            constraint=args.constraint or "json_schema",
        )
    quality = QualityFilter(
        min_judge_score=None if args.min_judge_score < 0 else args.min_judge_score,
        max_compression_ratio=None if args.max_compression_ratio < 0 else args.max_compression_ratio,
        min_blocks=args.min_blocks,
    )
    return PipelineConfig(
        target=target,
        tokenizer=args.tokenizer,
        memento_config=MementoConfig.parse(args.memento_config),
        window=args.window,
        min_block_tokens=args.min_block_tokens,
        variance_penalty=args.variance_penalty,
        max_block_sentences=args.max_block_sentences,
        judge_threshold=args.judge_threshold,
        max_iterations=args.max_iterations,
        feedback_chars=args.feedback_chars,
        missing_items=args.missing_items,
        missing_item_chars=args.missing_item_chars,
        quality=quality,
        max_attempts=args.max_attempts,
        temperature=args.temperature,
        concurrency=args.concurrency,
        max_in_flight=args.max_in_flight,
        stop_after_failures=args.stop_after_failures or None,
        retry_failed=args.retry_failed,
        plots=not args.no_plots,
    )


def main(args: list[str] | argparse.Namespace | None = None) -> PipelineSummary:
    """Run the pipeline from command-line arguments (a list, as `cli.py` passes them) or a namespace."""
    namespace = args if isinstance(args, argparse.Namespace) else parser().parse_args(args)
    config = config_from_args(namespace)
    summary = run_pipeline(namespace.input, namespace.out, config, progress=not namespace.no_progress)
    print(f"examples, traces and summary in {namespace.out}")
    return summary


if (
    __name__ == "__main__"
):  # `python -m memento_sglang.data.main`; SGLang's engine starts processes with spawn
    main()
