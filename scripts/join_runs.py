"""Join runs over disjoint cases of one split into one run directory that ``detoxedit report``,
``compare`` and ``label`` read as one run:

    python scripts/join_runs.py OUT_DIR RUN_DIR [RUN_DIR ...]

A run extended with more cases later (``bench --cases`` into another directory, as the 27-case DINM
test comparison in docs/tuning.md was) reads back as one: each run's ``records*.jsonl`` is copied as
``records.part-K.jsonl`` (the runner reads every ``records*.jsonl`` of a directory, as it reads shards),
the human labels are concatenated, and ``config.yaml`` is the first run's. It refuses, before writing
anything, runs that share a case or differ in what decides an answer (model, method, settings, split,
judge, decoding), and an OUT_DIR that exists.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

SAME = ("model", "dtype", "method", "hparams", "data", "split", "judge", "protocol", "max_new_tokens",
        "prompt_format", "seed")
"""Run settings that must agree for the joined cases to be one run (``config.yaml`` fields)."""


def main(argv: list[str]) -> int:
    import yaml

    from detoxedit.bench.human import labels_path
    from detoxedit.bench.records import read_run_records

    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, runs = Path(argv[1]), [Path(a) for a in argv[2:]]
    if out.exists():
        sys.exit(f"join_runs: {out} exists; remove it or name another directory")
    configs = []
    for run in runs:
        path = run / "config.yaml"
        if not path.is_file():
            sys.exit(f"join_runs: {path}: no config.yaml (not a run directory?)")
        configs.append(yaml.safe_load(path.read_text()))
    for run, cfg in zip(runs[1:], configs[1:]):
        for key in SAME:
            if cfg.get(key) != configs[0].get(key):
                sys.exit(f"join_runs: {run / 'config.yaml'}: {key} is {cfg.get(key)!r}, "
                         f"{runs[0] / 'config.yaml'} has {configs[0].get(key)!r}")
    seen: dict[str, Path] = {}
    for run in runs:
        for rec in read_run_records(run):
            cid = str(rec["case_id"])
            if cid in seen:
                sys.exit(f"join_runs: case {cid} is in both {seen[cid]} and {run}")
            seen[cid] = run
    out.mkdir(parents=True)
    k = 0
    for run in runs:
        for path in sorted(run.glob("records*.jsonl")):
            shutil.copyfile(path, out / f"records.part-{k}.jsonl")
            k += 1
    shutil.copyfile(runs[0] / "config.yaml", out / "config.yaml")
    labels = [labels_path(run).read_text() for run in runs if labels_path(run).is_file()]
    if labels:
        labels_path(out).write_text("".join(t if t.endswith("\n") else t + "\n" for t in labels))
    print(f"join_runs: {len(seen)} cases from {len(runs)} runs -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
