"""``detoxedit demo``: the main job on the embedded default, end to end, in about ten minutes on 2 CPU cores.

Embedded SmolLM2-135M-Instruct, the built-in benchmark's test split (a subset: the first
``--per-category`` cases of each of the 9 categories), DINM with the built-in config, the offline
default judge. Prints the table (DS/DG before and after, with 95% CIs) and writes the HTML report.
Resumable like ``bench``: run it again and finished cases are reused.
"""

from __future__ import annotations

import argparse

DEMO_MAX_NEW_TOKENS = 128
DEMO_GENERAL_LIMIT = 24


def register(sub) -> None:
    p = sub.add_parser("demo", help="DINM on the embedded model and the built-in benchmark, with a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--per-category", type=int, default=2, help="test cases per category (default: 2)")
    p.add_argument("--max-new-tokens", type=int, default=DEMO_MAX_NEW_TOKENS)
    p.add_argument("--judge", default="default")
    p.add_argument("--general-limit", type=int, default=DEMO_GENERAL_LIMIT,
                   help="items per general-ability task (KQA, CSum, over-refusal); 0 skips them")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def demo_cases(records, per_category: int) -> list[str]:
    """The first `per_category` case ids of each category, in file order."""
    from detoxedit.bench.runner import first_per_category

    return [str(r.id) for _, r in first_per_category(list(enumerate(records)), per_category)]


def run_demo_general(cfg, args) -> None:
    """General ability of the vanilla model and of the model edited on the first demo case (the paper
    measured KQA/CSum on one edit too), on a subset of each built-in task."""
    from pathlib import Path

    from detoxedit.bench.cache import ResponseCache, model_key
    from detoxedit.commands.general import edits_from_cases
    from detoxedit.general.evaluate import GeneralConfig, run_general
    from detoxedit.models.load import cache_dir, load_model

    model, tok = load_model(cfg.model, dtype=cfg.dtype)
    edits = edits_from_cases(model, tok, dict(model=cfg.model, dtype=cfg.dtype, method=cfg.method,
                                              data=cfg.data, split=cfg.split), cfg.cases[:1], None)
    print(f"general ability: KQA, CSum, over-refusal ({args.general_limit} items each), vanilla vs edited on "
          f"case {cfg.cases[0]}")
    run_general(model, tok, GeneralConfig(limit=args.general_limit), edits, Path(args.out),
                cache=ResponseCache(cache_dir(), model_key(model, cfg.model, cfg.dtype)),
                progress=not args.no_progress)


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
    if args.general_limit:
        run_demo_general(cfg, args)
    files = write_report(args.out)
    print()
    print(files["summary"].read_text())
    print(f"HTML report: {files['html']}")
    return 0
