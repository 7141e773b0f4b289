"""`memento-sglang eval`: problem sets x modes against a server URL or a local model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from memento_sglang.eval import (
    MODES,
    RULES,
    EngineTarget,
    EvalSettings,
    HttpTarget,
    Sampling,
    Structure,
    load_problems,
    run_eval,
    write_report,
)
from memento_sglang.eval.report import markdown


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memento-sglang eval", description=__doc__)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--url", help="a running server (memento-sglang serve ...), e.g. http://127.0.0.1:30000"
    )
    where.add_argument("--model-path", help="run an in-process engine on this model instead")
    p.add_argument("--sets", nargs="+", required=True, help="rg:TASK[:COUNT], champ[:COUNT], jsonl:PATH")
    p.add_argument("--modes", nargs="+", default=["memento", "no_eviction"], choices=list(MODES))
    p.add_argument("--memento-config", default='{"mask_delimiters": false}',
                   help="the server's --memento-config (JSON); the engine is started with it")  # fmt: skip
    p.add_argument("--tokenizer", help="tokenizer path (default: --model-path, or the server's model)")
    p.add_argument("--rule", choices=RULES, default="boxed", help="how the final answer is extracted")
    p.add_argument("--samples", type=int, default=1, help="completions per problem (n)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=-1, help="-1: off")
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0, help="problem generation and sampling seed")
    p.add_argument("--structure", metavar="BLOCKS:BLOCK_TOKENS:MEMENTO_TOKENS[:ANSWER_TOKENS]",
                   help="force the Memento structure with a grammar (models not trained on it)")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("artifacts/eval"))
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    problems = [p for spec in args.sets for p in load_problems(spec, seed=args.seed)]
    config = json.loads(args.memento_config)
    structure = None
    if args.structure:
        structure = Structure(*(int(x) for x in args.structure.split(":")))
    settings = EvalSettings(
        modes=tuple(args.modes),
        sampling=Sampling(
            args.temperature, args.top_p, args.max_new_tokens, args.samples, args.seed, args.top_k
        ),
        rule=args.rule,
        memento_config=config,
        structure=structure,
    )
    from transformers import AutoTokenizer

    target: HttpTarget | EngineTarget
    if args.url:
        target = HttpTarget(args.url)
        tokenizer_path = args.tokenizer or _served_model(args.url)
    else:
        target = EngineTarget(args.model_path, config)
        tokenizer_path = args.tokenizer or args.model_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    try:
        records = run_eval(problems, target, tokenizer, settings, args.out, concurrency=args.concurrency)
    finally:
        if isinstance(target, EngineTarget):
            target.close()
    summary = write_report(records, settings.modes, args.out)
    print(markdown(summary))
    print(f"samples, summary and plots in {args.out}")
    return summary


def _served_model(url: str) -> str:
    import requests

    return requests.get(f"{url.rstrip('/')}/get_model_info", timeout=30).json()["model_path"]
