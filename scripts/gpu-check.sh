#!/usr/bin/env bash
# One prepared GPU check (H100/H200, under 8 minutes): the paged KV move on a Qwen3-8B
# shape, tests/gpu, and where SGLang is installed the key benchmark points. Every figure
# goes to one JSON file: ${1:-artifacts/gpu-check}/gpu-check.json (logs beside it).
#
#   ./scripts/gpu-check.sh [OUT_DIR]
#
# Uses .venv when present (./scripts/setup.sh), else python3 (torch + Triton are enough
# for the kernel figures and the kernel tests).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONUNBUFFERED=1
exec timeout 470 "$PYTHON" scripts/gpu_check.py --out "${1:-artifacts/gpu-check}"
