#!/usr/bin/env bash
# Keep a `detoxedit tune` study in a small, committable copy, and put it back to resume or re-rank it.
#   bash scripts/keep_study.sh save    STUDY_DIR COPY_DIR   # e.g. runs/results/tune-ft-l results/tune/ft-l
#   bash scripts/keep_study.sh restore COPY_DIR STUDY_DIR   # then rerun the same `detoxedit tune` command
# The copy holds what the study's decisions and numbers rest on: Optuna's storage (study.db), the resolved
# study (tune.yaml), the outputs (trials.jsonl, best.yaml, tune.md, tune.html) and, per trial, its run's
# config.yaml, records (one file per shard) and human_labels.jsonl (answers, labels, timings), and the same
# for each confirmation run (confirm/KEY, `tune --confirm-per-category`). It leaves
# out what a rerun rebuilds: trained artefacts (LoRA deltas, MEND editors), saved edits and caches. A trial
# that was cut off resumes at its first unfinished case; a trained method whose trial was cut off trains
# its artefact again.
set -euo pipefail
mode=${1:?save or restore}; src=${2:?source directory}; dst=${3:?destination directory}
[ -f "$src/tune.yaml" ] || { echo "keep_study: $src/tune.yaml not found: not a tune study" >&2; exit 2; }
[ "$mode" = save ] || [ "$mode" = restore ] || { echo "keep_study: mode must be save or restore" >&2; exit 2; }
if [ "$mode" = restore ] && [ -e "$dst/study.db" ]; then
  echo "keep_study: $dst already holds a study; move it away first" >&2; exit 2
fi

put() {  # put FILE DIR: copy FILE into DIR atomically (a temporary name, then a rename), when it exists
  [ -f "$1" ] || return 0
  cp "$1" "$2/$(basename "$1").tmp" && mv "$2/$(basename "$1").tmp" "$2/$(basename "$1")"
}

mkdir -p "$dst"
# study.db through SQLite's backup API: a consistent copy even while the study writes to it
python3 -c 'import sqlite3, sys; a = sqlite3.connect(sys.argv[1]); b = sqlite3.connect(sys.argv[2]); a.backup(b); b.close()' \
  "$src/study.db" "$dst/study.db.tmp" && mv "$dst/study.db.tmp" "$dst/study.db"
for f in tune.yaml trials.jsonl best.yaml tune.md tune.html; do
  put "$src/$f" "$dst"
done
for trial in "$src"/trials/*/ "$src"/confirm/*/; do   # the trials' runs and the confirmation runs
  [ -d "$trial" ] || continue
  sub=$(basename "$(dirname "$trial")")/$(basename "$trial")
  mkdir -p "$dst/$sub"
  for path in "$trial"config.yaml "$trial"records*.jsonl "$trial"human_labels.jsonl; do
    put "$path" "$dst/$sub"
  done
done
echo "keep_study: $mode $src -> $dst ($(du -sh "$dst" | cut -f1))"
