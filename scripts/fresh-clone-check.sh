#!/usr/bin/env bash
# What a new user sees: clone this commit into a temporary folder and run the README's two
# commands there exactly as written, with a fresh .venv (only pip's download cache is reused).
# Prints each command's wall time and result; exits non-zero if either failed.
#
#   ./scripts/fresh-clone-check.sh            # demo, then the whole test suite
#   KEEP=1 ./scripts/fresh-clone-check.sh     # keep the clone (its .venv is ~11 GB)
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$repo" rev-parse HEAD)
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  echo "note: uncommitted changes are not part of the check (it runs commit ${commit:0:12})"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/memento-fresh-XXXXXX")
git clone -q --no-hardlinks "$repo" "$work/memento-sglang"
git -C "$work/memento-sglang" checkout -q "$commit"
cd "$work/memento-sglang"
echo "fresh clone of ${commit:0:12} in $work/memento-sglang on $(nproc) cores, $(date -u +%FT%TZ)"

status=0
run() {
  local name=$1
  shift
  local started=$SECONDS
  "$@" >"$work/$name.log" 2>&1
  local rc=$?
  local took=$((SECONDS - started))
  printf '%-26s rc=%d  %dm%02ds  (log: %s)\n' "$*" "$rc" $((took / 60)) $((took % 60)) "$work/$name.log"
  grep -E "^(=+ .*(passed|failed|error).* =+|[0-9]+ (passed|failed).*)$" "$work/$name.log" | tail -1 | sed 's/^/    /'
  grep -A12 "server start-up" "$work/$name.log" | sed 's/^/    /'
  [ "$rc" -eq 0 ] || status=1
}
run demo ./scripts/demo.sh
run test ./scripts/test.sh
if [ "${KEEP:-0}" != 1 ]; then
  rm -rf "$work/memento-sglang"
fi
exit "$status"
