#!/usr/bin/env bash
# DINM at fixed layers, for the localisation study of `detoxedit analyze` (docs/analysis.md).
# Usage: scripts/layer_sweep.sh OUT_ROOT LAYER [LAYER...]
#   env: MODEL (default: default), LIMIT (cases, default 9), MAX_NEW_TOKENS (default 64), DATA (builtin), SPLIT (test)
# Each layer N writes OUT_ROOT/dinm-L<N> (resumable); then compare them with the located-layer run:
#   detoxedit analyze --model "$MODEL" --runs OUT_ROOT/dinm OUT_ROOT/dinm-L* --out OUT_ROOT/analysis
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 OUT_ROOT LAYER [LAYER...]" >&2
  exit 2
fi
out_root=$1
shift
for layer in "$@"; do
  detoxedit bench --model "${MODEL:-default}" --method dinm --data "${DATA:-builtin}" --split "${SPLIT:-test}" \
    --limit "${LIMIT:-9}" --max-new-tokens "${MAX_NEW_TOKENS:-64}" --save-edits \
    --hparam "layers=[$layer]" --out "$out_root/dinm-L$layer" --no-progress
done
