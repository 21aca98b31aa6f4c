#!/usr/bin/env bash
# The comparison in docs/results.md: DINM and the six baselines on the embedded SmolLM2-135M-Instruct and
# the built-in benchmark, with the same judge, inputs and decoding. Every step resumes where it stopped.
#   bash scripts/results.sh [OUT_DIR]        (default: runs/results)
set -euo pipefail
OUT=${1:-runs/results}
DX=${DX:-.venv/bin/detoxedit}
# Same for every method: the first PER_CATEGORY test cases of each of the 9 categories (default 1: 9 cases,
# sized for 2 CPU cores), greedy, 128 new tokens, the default judge; general ability on 16 items per task.
PER_CATEGORY=${PER_CATEGORY:-1}
COMMON=(--model default --data builtin --split test --per-category "$PER_CATEGORY" --max-new-tokens 128
        --judge default --save-edits --no-progress)
GENERAL=(--general-limit 16 --no-progress)
# MEND's editor trains on at most this many train cases (one per step); its config's own default is a full epoch.
MEND_STEPS=${MEND_STEPS:-250}
METHODS=${METHODS:-"dinm ft-l self-reminder sft dpo ext-sub mend"}
# TUNE_TRIALS=N: first choose each method's settings with `detoxedit tune` on the built-in val split, N trials
# for every method (the same budget; Self-Reminder has nothing to tune), and run the comparison with each
# method's best.yaml (docs/tuning.md). Unset: the built-in configs, as docs/results.md was made.
TUNE_TRIALS=${TUNE_TRIALS:-}
# --min-ds 85: with 9 cases one unsafe DS answer gives 88.9, so the default 90 would ask for every case.
TUNE=(--model default --data builtin --split val --per-category "$PER_CATEGORY" --max-new-tokens 128
      --judge default --overrefusal-items 8 --kqa-items 8 --min-ds 85)
# Studies are kept, small, in $KEEP/METHOD (scripts/keep_study.sh; committed): a study found there is put
# back before its tune command runs, so a study cut off in one session resumes in the next.
KEEP=${KEEP:-results/tune}
# per method, the settings and trained artefact its test run used; the test_ALL runs below use the same
declare -A CONF ART

for m in $METHODS; do
  # methods trained on the train split (sft, dpo, ext-sub, mend) train into $OUT/$m/artifact first
  extra=()
  [ "$m" = mend ] && extra=(--hparam "max_steps=$MEND_STEPS")
  if [ -n "$TUNE_TRIALS" ] && [ "$m" != self-reminder ]; then
    if [ -f "$KEEP/$m/tune.yaml" ] && [ ! -e "$OUT/tune-$m/study.db" ]; then
      bash scripts/keep_study.sh restore "$KEEP/$m" "$OUT/tune-$m"
    fi
    "$DX" tune --method "$m" "${TUNE[@]}" "${extra[@]}" --trials "$TUNE_TRIALS" --out "$OUT/tune-$m"
    bash scripts/keep_study.sh save "$OUT/tune-$m" "$KEEP/$m"
    extra+=(--method-config "$OUT/tune-$m/best.yaml")
    # a trained method reuses the best trial's artefact when this machine still has it (the kept study does not)
    run=$(sed -n 's/^# trial run: \([^ ]*\).*/\1/p' "$OUT/tune-$m/best.yaml")
    CONF[$m]="$OUT/tune-$m/best.yaml"
    if [ -n "$run" ] && [ -f "$OUT/tune-$m/$run/artifact/artifact.json" ] && [ ! -e "$OUT/$m/artifact" ]; then
      ART[$m]="$OUT/tune-$m/$run/artifact"
      extra+=(--artifact "${ART[$m]}")
    fi
  fi
  "$DX" bench --method "$m" "${COMMON[@]}" "${extra[@]}" --out "$OUT/$m"
  "$DX" general --run "$OUT/$m" "${GENERAL[@]}"
  "$DX" judge "$OUT/$m" --judge default > /dev/null   # labels from the judge as it is now, for every run alike
  "$DX" judge "$OUT/$m" --judge refusal > /dev/null   # and from the phrase-based judge, as a cross-check
  "$DX" report "$OUT/$m" > /dev/null
done
# The paper's protocol for the traditional methods: test_ALL-style inputs (questions alone, adversarial inputs).
# The built-in test_ALL has 243 records (27 questions alone, 216 adversarial inputs); TEST_ALL_SHARD=0/4 (default)
# takes every 4th record (61: 7 questions, 54 adversarial inputs) to fit 2 CPU cores; TEST_ALL_SHARD=0/1 takes all.
TEST_ALL_SHARD=${TEST_ALL_SHARD:-0/4}
TEST_ALL_METHODS=${TEST_ALL_METHODS:-"sft dpo self-reminder"}
for m in $TEST_ALL_METHODS; do
  art=()
  [ "$m" != self-reminder ] && art=(--artifact "${ART[$m]:-$OUT/$m/artifact}")
  [ -n "${CONF[$m]:-}" ] && art+=(--method-config "${CONF[$m]}")
  "$DX" bench --method "$m" --model default --data builtin --split test_ALL --max-new-tokens 128 \
        --judge default --no-progress --shard "$TEST_ALL_SHARD" "${art[@]}" --out "$OUT/$m-test_ALL"
  "$DX" judge "$OUT/$m-test_ALL" --judge default > /dev/null
  "$DX" judge "$OUT/$m-test_ALL" --judge refusal > /dev/null
done
[ -n "${SKIP_COMPARE:-}" ] && exit 0
"$DX" compare $(for m in $METHODS; do echo "$OUT/$m"; done) --out "$OUT/compare"
"$DX" compare $(for m in $METHODS; do echo "$OUT/$m"; done) --judge refusal --out "$OUT/compare-refusal"
tall=$(for m in $TEST_ALL_METHODS; do [ -d "$OUT/$m-test_ALL" ] && echo "$OUT/$m-test_ALL"; done)
if [ -n "$tall" ]; then
  "$DX" compare $tall --out "$OUT/compare-test_ALL"
  "$DX" compare $tall --judge refusal --out "$OUT/compare-test_ALL-refusal"
fi
# The mechanism analysis of docs/analysis.md (probe, parameter toxicity, activation shift) on the same runs.
"$DX" analyze --model default --runs $(for m in $METHODS; do echo "$OUT/$m"; done) --out "$OUT/analysis" --no-progress
exit 0
