"""``detoxedit demo``: the main job on the embedded default, end to end, in about ten minutes on 2 CPU cores.

Embedded SmolLM2-135M-Instruct, the built-in benchmark's test split (a subset: the first
``--per-category`` cases of each of the 9 categories), DINM with the built-in config, the offline
default judge. Prints the table (DS/DG before and after, with 95% CIs) and writes the HTML report.
Resumable like ``bench``: run it again and finished cases are reused.
"""

from __future__ import annotations

import argparse

DEMO_MAX_NEW_TOKENS = 128


def register(sub) -> None:
    p = sub.add_parser("demo", help="DINM on the embedded model and the built-in benchmark, with a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--per-category", type=int, default=2, help="test cases per category (default: 2)")
    p.add_argument("--max-new-tokens", type=int, default=DEMO_MAX_NEW_TOKENS)
    p.add_argument("--judge", default="default")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def demo_cases(records, per_category: int) -> list[str]:
    """The first `per_category` case ids of each category, in file order."""
    taken: dict[str, int] = {}
    ids = []
    for r in records:
        cat = r.canonical_category or r.category
        if taken.get(cat, 0) < per_category:
            taken[cat] = taken.get(cat, 0) + 1
            ids.append(str(r.id))
    return ids


def run(args) -> int:
    from detoxedit.bench.report import write_report
    from detoxedit.bench.runner import run_bench
    from detoxedit.config import RunConfig
    from detoxedit.data.safeedit import load_split

    records = load_split("builtin", "test")
    cfg = RunConfig(model="default", method="dinm", data="builtin", split="test", judge=args.judge,
                    cases=demo_cases(records, args.per_category), max_new_tokens=args.max_new_tokens)
    print(f"detoxedit demo: DINM on the embedded SmolLM2-135M-Instruct, {len(cfg.cases)} built-in test cases, "
          f"judge '{cfg.judge}', greedy {cfg.max_new_tokens} new tokens -> {args.out}")
    run_bench(cfg, args.out, progress=not args.no_progress)
    files = write_report(args.out)
    print()
    print(files["summary"].read_text())
    print(f"HTML report: {files['html']}")
    return 0
