"""Per-case time and peak memory of the batched engine (``--batch-cases K``) against the case-by-case path.

    python benchmarks/batched.py                       # the demo's work, fp32 and bf16, K = 1, 6, 18
    python benchmarks/batched.py --quick               # smoke run: 3 cases, 32 new tokens, bf16, K = 1, 3

The demo's settings (``detoxedit demo``): the embedded model (``--model default``), the first 2 cases of
each category of the built-in test split (18 cases), DINM with its shipped config, greedy 128 new
tokens, the default judge, and over-refusal on 16 harmless prompts after every edit; the demo's
general-ability step (one edit, KQA/CSum) is not part of a case and is left out. Every configuration
(dtype x K) runs in its own subprocess, with an empty response cache, so the vanilla answers are
generated (and timed) every time, while the converted model in ``$DETOXEDIT_CACHE`` is reused; the
subprocess reports its peak RSS (``ru_maxrss``), which includes loading the model.

Per case: the run's wall time (model load included) / cases, and the mean of the records' ``total_s``
(what ``detoxedit report`` sums; the batched path divides the shared phases' time among their cases)
with its parts. The edited answers of each K are compared with K = 1's (equal up to float rounding of
differently sized batches). Results: ``benchmarks/results/batched.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("vanilla_generation_s", "edit_s", "edited_generation_s", "overrefusal_s", "kqa_s", "judge_s", "total_s")


def child(args) -> None:
    """One configuration, in this process: run it, then print one ``RESULT {json}`` line."""
    import logging
    import resource

    import torch
    import yaml

    from detoxedit.bench.records import read_run_records
    from detoxedit.bench.runner import run_bench
    from detoxedit.cases import first_per_category
    from detoxedit.config import RunConfig
    from detoxedit.data.load import load_split

    logging.basicConfig(level=logging.INFO, format="   %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    records = load_split("builtin", "test")
    ids = [str(r.id) for _, r in first_per_category(list(enumerate(records)), args.per_category)]
    cfg = RunConfig(model="default", dtype=args.dtype, method="dinm", data="builtin", split="test",
                    cases=ids[:args.cases] if args.cases else ids, judge=args.judge,
                    max_new_tokens=args.max_new_tokens, overrefusal_items=args.overrefusal_items,
                    batch_cases=args.batch_cases, batch_size=args.batch_size)
    run_dir = Path(args.workdir) / "run"
    t0 = time.perf_counter()
    run_bench(cfg, run_dir, progress=False, response_cache=Path(args.workdir) / "responses")
    wall = time.perf_counter() - t0
    recs = read_run_records(run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    result = {
        "dtype": args.dtype, "batch_cases": args.batch_cases, "batch_size": saved.get("batch_size"),
        "cases": len(recs), "wall_s": wall, "wall_per_case_s": wall / max(len(recs), 1),
        "mean": {k: statistics.mean(r["timings"].get(k, 0.0) for r in recs) for k in PARTS},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(), "run_dir": str(run_dir),
        "edit_statuses": [r["edit"].get("validation", {}).get("status") for r in recs],
    }
    print("RESULT " + json.dumps(result), flush=True)


def edited_answers(run_dir: str) -> dict[str, dict]:
    from detoxedit.bench.records import read_run_records

    return {r["case_id"]: r["edited"] for r in read_run_records(Path(run_dir))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 cases, 32 new tokens, 4 harmless prompts, bf16, K=1,3")
    ap.add_argument("--dtypes", default=None, help="comma-separated (default: fp32,bf16; --quick: bf16)")
    ap.add_argument("--k", default=None, help="batch_cases values, comma-separated (default: 1,6,18; --quick: 1,3)")
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--cases", type=int, default=None, help="only the first N of the demo's cases")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (--quick: 32)")
    ap.add_argument("--overrefusal-items", type=int, default=None, help="default 16 (--quick: 4)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: chosen from free memory (auto)")
    ap.add_argument("--judge", default="default")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per configuration")
    ap.add_argument("--out", default=None, help="default benchmarks/results/batched.json (--quick: batched_quick.json)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--batch-cases", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    q = args.quick
    args.max_new_tokens = args.max_new_tokens or (32 if q else 128)
    args.overrefusal_items = args.overrefusal_items if args.overrefusal_items is not None else (4 if q else 16)
    args.cases = args.cases or (3 if q else None)
    if args.child:
        child(args)
        return
    dtypes = (args.dtypes or ("bf16" if q else "fp32,bf16")).split(",")
    ks = [int(k) for k in (args.k or ("1,3" if q else "1,6,18")).split(",")]
    out = Path(args.out or f"benchmarks/results/batched{'_quick' if q else ''}.json")
    rows = []
    with tempfile.TemporaryDirectory(prefix="detoxedit-batched-") as tmp:
        for dtype in dtypes:
            for k in ks:
                work = Path(tmp) / f"{dtype}-k{k}"
                cmd = [sys.executable, __file__, "--child", "--dtype", dtype, "--batch-cases", str(k),
                       "--workdir", str(work), "--per-category", str(args.per_category),
                       "--max-new-tokens", str(args.max_new_tokens), "--overrefusal-items",
                       str(args.overrefusal_items), "--judge", args.judge]
                for flag, value in (("--cases", args.cases), ("--batch-size", args.batch_size),
                                    ("--threads", args.threads)):
                    if value:
                        cmd += [flag, str(value)]
                print(f"== {dtype}, batch_cases {k} ...", flush=True)
                try:
                    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    print(f"   timed out after {args.timeout} s", flush=True)
                    rows.append({"dtype": dtype, "batch_cases": k, "error": "timeout"})
                    continue
                found = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode != 0 or not found:
                    print(proc.stdout[-2000:], flush=True)
                    rows.append({"dtype": dtype, "batch_cases": k, "error": f"exit {proc.returncode}"})
                    continue
                row = json.loads(found[-1])
                base = next((r for r in rows if r.get("dtype") == dtype and r.get("batch_cases") == ks[0]
                             and "error" not in r), None)
                if base is not None and k != ks[0]:
                    mine, ref = edited_answers(row["run_dir"]), edited_answers(base["run_dir"])
                    pairs = [(mine[c][key], ref[c][key]) for c in ref if c in mine for key in ref[c]]
                    row["edited_answers_equal_to_k1"] = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
                rows.append(row)
                m = row["mean"]
                print(f"   batch size {row['batch_size']}, {row['cases']} cases: {row['wall_per_case_s']:.1f} s per "
                      f"case (wall), records' total_s {m['total_s']:.1f} s (vanilla {m['vanilla_generation_s']:.1f}, "
                      f"edit {m['edit_s']:.1f}, edited {m['edited_generation_s']:.1f}, over-refusal "
                      f"{m['overrefusal_s']:.1f}, judge {m['judge_s']:.1f}); peak RSS {row['peak_rss_mib']:.0f} MiB"
                      + (f"; edited answers equal to K={ks[0]}: {row['edited_answers_equal_to_k1']}"
                         if "edited_answers_equal_to_k1" in row else ""), flush=True)
    for row in rows:
        row.pop("run_dir", None)
    print("\nper case (wall) and peak RSS:")
    for dtype in dtypes:
        cells = [r for r in rows if r["dtype"] == dtype and "error" not in r]
        base = next((r for r in cells if r["batch_cases"] == ks[0]), None)
        for r in cells:
            speed = f"  {base['wall_per_case_s'] / r['wall_per_case_s']:.2f}x" if base else ""
            print(f"  {dtype:5} K={r['batch_cases']:<3} {r['wall_per_case_s']:6.1f} s/case{speed}  "
                  f"{r['peak_rss_mib']:6.0f} MiB")
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "processor": platform.processor(),
                               "cpus": os.cpu_count(), "torch": torch.__version__,
                               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                               "args": {k: v for k, v in vars(args).items()
                                        if k not in ("child", "workdir", "dtype", "batch_cases")},
                               "rows": rows}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
