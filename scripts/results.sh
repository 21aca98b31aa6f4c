#!/usr/bin/env bash
# The comparison in docs/results.md: DINM and the six baselines on the embedded SmolLM2-135M-Instruct and
# the built-in benchmark, with the same judge, inputs and decoding. Every step resumes where it stopped.
#   bash scripts/results.sh [OUT_DIR]        (default: runs/results)
set -euo pipefail
OUT=${1:-runs/results}
DX=${DX:-.venv/bin/detoxedit}
# Same for every method: 18 test cases (the first 2 of each category), greedy, 128 new tokens, default judge.
COMMON=(--model default --data builtin --split test --per-category 2 --max-new-tokens 128 --judge default
        --save-edits --no-progress)
GENERAL=(--limit 24 --no-progress)
METHODS=${METHODS:-"dinm ft-l self-reminder sft dpo ext-sub mend"}

for m in $METHODS; do
  # methods trained on the train split (sft, dpo, ext-sub, mend) train into $OUT/$m/artifact first
  "$DX" bench --method "$m" "${COMMON[@]}" --out "$OUT/$m"
  "$DX" general --run "$OUT/$m" "${GENERAL[@]}"
  "$DX" report "$OUT/$m" > /dev/null
done
# The paper's protocol for the traditional methods: test_ALL-style inputs (questions alone, adversarial inputs).
for m in sft dpo self-reminder; do
  case " $METHODS " in *" $m "*) ;; *) continue ;; esac
  art=()
  [ "$m" != self-reminder ] && art=(--artifact "$OUT/$m/artifact")
  "$DX" bench --method "$m" --model default --data builtin --split test_ALL --max-new-tokens 128 \
        --judge default --no-progress "${art[@]}" --out "$OUT/$m-test_ALL"
done
"$DX" compare $(for m in $METHODS; do echo "$OUT/$m"; done) --out "$OUT/compare"
