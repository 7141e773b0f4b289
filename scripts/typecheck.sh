#!/usr/bin/env bash
# Type-check memento_sglang as it imports: with frontend/ and kernels/ as its subpackages.
# setuptools maps those top-level folders into the package at install time; mypy reads
# folders, so a tree of links under build/ shows it the installed layout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TREE=build/typecheck
rm -rf "$TREE/memento_sglang"
mkdir -p "$TREE/memento_sglang"
for entry in memento_sglang/*; do
  [ "$(basename "$entry")" = __pycache__ ] || ln -s "$ROOT/$entry" "$TREE/memento_sglang/"
done
ln -s "$ROOT/frontend" "$TREE/memento_sglang/frontend"
ln -s "$ROOT/kernels" "$TREE/memento_sglang/kernels"
cd "$TREE"
exec "$ROOT/.venv/bin/python" -m mypy --config-file "$ROOT/pyproject.toml" -p memento_sglang
