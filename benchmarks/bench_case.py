"""Time one benchmark case and its parts on the embedded default model.

    python benchmarks/bench_case.py [--cases 3] [--max-new-tokens 128] [--judge default]

Runs the first N cases of the built-in test split through the real runner (DINM, fair protocol) with
an empty response cache, so vanilla generation is timed too, and prints the median time of each part:
vanilla generation (5 inputs), localisation, the 10-step edit, edited generation (5 inputs), judging
(10 responses). Results go to benchmarks/results/bench_case.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--judge", default="default")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--out", default="benchmarks/results/bench_case.json")
    args = ap.parse_args()

    import torch

    from detoxedit.bench.records import read_run_records
    from detoxedit.bench.runner import run_bench
    from detoxedit.config import RunConfig

    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(model="default", dtype=args.dtype, data="builtin", split="test", judge=args.judge,
                        limit=args.cases, max_new_tokens=args.max_new_tokens)
        # An empty response cache, so vanilla generation is timed too.
        run_bench(cfg, Path(tmp) / "run", progress=False, response_cache=Path(tmp) / "cache")
        records = read_run_records(Path(tmp) / "run")
    parts = {
        "vanilla generation (5 inputs)": [r["timings"]["vanilla_generation_s"] for r in records],
        "localisation": [r["edit"]["timings"]["locate_s"] for r in records],
        "edit (prepare + 10 steps)": [r["edit"]["timings"]["prepare_s"] + r["edit"]["timings"]["train_s"]
                                      for r in records],
        "edited generation (5 inputs)": [r["timings"]["edited_generation_s"] for r in records],
        "judge (10 responses)": [r["timings"]["judge_s"] for r in records],
        "whole case": [r["timings"]["total_s"] for r in records],
    }
    print(f"{len(records)} cases, {args.dtype}, greedy {args.max_new_tokens} new tokens, judge {args.judge}, "
          f"torch threads {torch.get_num_threads()}")
    for name, values in parts.items():
        print(f"  {name:32} median {statistics.median(values):6.2f}s   (runs: "
              + ", ".join(f"{v:.2f}" for v in values) + ")")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "args": vars(args),
                               "parts": parts}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
