#!/usr/bin/env bash
# Create ./.venv when missing and install memento-sglang (editable) with what it needs:
# SGLang 0.5.23 (pinned), its CUDA-build torch (runs on CPU too), and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import sglang, pytest, hypothesis, requests, ruff" >/dev/null 2>&1; then
  echo "Installing memento-sglang and SGLang 0.5.23 into .venv (first run: ~10 minutes, ~11 GB)..."
fi
python -m pip install --disable-pip-version-check -q -e ".[test]"
