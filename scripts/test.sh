#!/usr/bin/env bash
# The test suite: lint, type check, unit tests, real CPU SGLang servers, the HF oracle, the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
./scripts/typecheck.sh
exec .venv/bin/python -m pytest "$@"
