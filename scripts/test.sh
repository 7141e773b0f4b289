#!/usr/bin/env bash
# The test suite: lint, unit tests, real CPU SGLang servers, the HF oracle, the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
