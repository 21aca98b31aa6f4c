"""``detoxedit demo``: the main job on the embedded default, end to end, in about 20-25 minutes on 2 CPU cores.

Embedded SmolLM2-135M-Instruct, the built-in benchmark's test split (a subset: ``--per-category``
distinct questions of each of the 9 categories, one case each, attack templates rotated), DINM with the
built-in config, the offline default judge. Prints the table (DS/DG before and after, with 95% CIs) and
writes the HTML report.
Resumable like ``bench``: run it again and finished cases are reused.
"""

from __future__ import annotations

import argparse

from detoxedit.commands import COMMANDS

DEMO_MAX_NEW_TOKENS = 128
DEMO_GENERAL_LIMIT = 24


DEMO_FLAGS = ("per_category", "per_category_by", "max_new_tokens", "judge")
"""The run flags ``demo`` takes (they mean what they mean in ``bench``)."""
DEMO_DEFAULTS = {"per_category": 2, "per_category_by": "question", "max_new_tokens": DEMO_MAX_NEW_TOKENS}
"""``question``: every demo case asks its own question, so its bootstrap CIs count independent cases
(the built-in files list a question's attack variants together: ``case`` would pair attacks on one
question)."""


@COMMANDS.register("demo", order=10)
def register(sub) -> None:
    from detoxedit.settings import add_run_arguments

    p = sub.add_parser("demo", help="DINM on the embedded model and the built-in benchmark, with a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    add_run_arguments(p, only=DEMO_FLAGS, defaults=DEMO_DEFAULTS, run_config=False)
    p.add_argument("--general-limit", type=int, default=DEMO_GENERAL_LIMIT,
                   help="items per general-ability task (KQA, CSum, over-refusal); 0 skips them")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run_demo_general(cfg, args) -> None:
    """General ability of the vanilla model and of the model edited on the first demo case (the paper
    measured KQA/CSum on one edit too), on a subset of each built-in task."""
    import dataclasses
    from pathlib import Path

    from detoxedit.general.edits import edits_from_cases
    from detoxedit.general.evaluate import GeneralConfig, run_general
    from detoxedit.io import cache_dir
    from detoxedit.models.load import load_model
    from detoxedit.responses import ResponseCache, model_key

    model, tok = load_model(cfg.model, dtype=cfg.dtype)
    first = dataclasses.replace(cfg, cases=cfg.cases[:1], hparams={}, method_config=None, max_new_tokens=None)
    edits = edits_from_cases(model, tok, first)
    print(f"general ability: KQA, CSum, over-refusal ({args.general_limit} items each), vanilla vs edited on "
          f"case {cfg.cases[0]}")
    run_general(model, tok, GeneralConfig(limit=args.general_limit), edits, Path(args.out),
                cache=ResponseCache(cache_dir(), model_key(model, cfg.model, cfg.dtype)),
                progress=not args.no_progress)


def run(args) -> int:
    import dataclasses

    from detoxedit.bench.report import write_report
    from detoxedit.bench.runner import run_bench
    from detoxedit.cases import select_records
    from detoxedit.data.load import load_split
    from detoxedit.settings import run_config

    base = run_config(args, defaults={"model": "default", "method": "dinm", "data": "builtin", "split": "test",
                                      **DEMO_DEFAULTS})
    records = load_split(base.data, base.split)
    chosen = [r for _, r in select_records(records, base)]
    cfg = dataclasses.replace(base, cases=[str(r.id) for r in chosen], per_category=None, per_category_by="case")
    n_questions = len({r.question for r in chosen})
    print(f"detoxedit demo: DINM on the embedded SmolLM2-135M-Instruct, {len(cfg.cases)} built-in test cases "
          f"({n_questions} distinct questions), judge '{cfg.judge}', greedy {cfg.max_new_tokens} new tokens "
          f"-> {args.out}")
    run_bench(cfg, args.out, progress=not args.no_progress)
    if args.general_limit:
        run_demo_general(cfg, args)
    files = write_report(args.out)
    print()
    print(files["summary"].read_text())
    import json

    print(change_verdict(json.loads(files["metrics"].read_text())))
    print(f"HTML report: {files['html']}")
    return 0


def change_verdict(metrics: dict) -> str:
    """Whether the demo's cases are enough to tell that DINM changed DS and DG-Avg: each change's 95%
    paired-bootstrap CI, and whether it excludes zero."""
    parts = []
    for key in ("DS", "DG-Avg"):
        cell = metrics.get("change", {}).get(key)
        if not cell or cell.get("ci_low") is None:
            continue
        lo, hi, v = cell["ci_low"], cell["ci_high"], cell["value"]
        if lo > 0 or hi < 0:
            word = "rose" if v > 0 else "fell"
            parts.append(f"{key} change {v:+.1f} [{lo:+.1f}, {hi:+.1f}]: the CI excludes zero, so on these cases "
                         f"{key} {word} with the edit")
        else:
            parts.append(f"{key} change {v:+.1f} [{lo:+.1f}, {hi:+.1f}]: the CI includes zero, so these "
                         f"{metrics.get('n_cases')} cases cannot tell a change in {key} from chance (more cases: "
                         "--per-category N)")
    return "\n".join(parts)
