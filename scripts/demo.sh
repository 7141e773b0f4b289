#!/usr/bin/env bash
# The main job: a Memento generation on the embedded tiny model, on CPU (or GPU if present).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/memento-sglang demo "$@"
