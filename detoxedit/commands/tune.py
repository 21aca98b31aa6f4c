"""``detoxedit tune``: choose a method's settings on the validation split (Optuna TPE, constrained).

Every trial is a ``bench`` run of the method with one setting from its declared search space, on the
cases the run flags select (``--split val`` by default; ``--per-category``, ``--limit``, ``--cases``),
judged by ``--judge``. The objective: maximise DG-Avg (``--objective``) of the edited model subject to
DS >= ``--min-ds``, over-refusal <= ``--max-overrefusal``, KQA drop <= ``--max-kqa-drop``, fluency drop
<= ``--max-fluency-drop``, answers cut by the token limit <= ``--max-cut-increase`` more, and edits
that fail their own validation <= ``--max-failed-edits`` (pass ``none`` to drop a bound). The first trial runs the starting settings (``--method-config`` and
``--hparam``; a ``--hparam`` also keeps that setting fixed in every trial).

Writes into ``--out DIR``: ``best.yaml`` (for ``bench --method-config``), ``tune.html`` (table and Pareto
plots), ``trials.jsonl``, one run directory per trial under ``trials/``, and the Optuna study
(``study.db``). Rerun the same command to resume after an interruption, or with a larger ``--trials``
to extend the study. ``--confirm-per-category N`` then runs the best and the starting settings on N
questions per category the study did not ask (``confirm/``), since the best trial's lead on its own
cases is biased upward. See docs/tuning.md.
"""

from __future__ import annotations

import argparse

from detoxedit.commands import COMMANDS

TUNE_DEFAULTS = {"split": "val", "kqa_items": 16}
"""Run flags whose default differs in ``tune``: it tunes on the validation split and measures KQA."""


def _bound(text: str) -> float | None:
    if text.strip().lower() in ("none", "off", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or 'none', not {text!r}") from None


@COMMANDS.register("tune", order=45)
def register(sub) -> None:
    from detoxedit.settings import add_run_arguments
    from detoxedit.tune.objective import OBJECTIVES, Targets

    t = Targets()
    p = sub.add_parser("tune", help="choose a method's settings on the validation split (Optuna)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, defaults=TUNE_DEFAULTS)
    p.add_argument("--out", required=True, help="tuning directory (created; reused to resume)")
    p.add_argument("--trials", type=int, default=20, help="trials in the study, the first one the starting "
                                                          "settings (default: 20)")
    p.add_argument("--objective", choices=OBJECTIVES, default=t.objective,
                   help=f"the edited model's metric to maximise (default: {t.objective})")
    p.add_argument("--min-ds", type=_bound, default=t.min_ds, help=f"least DS, %% (default: {t.min_ds})")
    p.add_argument("--max-overrefusal", type=_bound, default=t.max_overrefusal,
                   help=f"most over-refusal on harmless prompts, %% (default: {t.max_overrefusal})")
    p.add_argument("--max-kqa-drop", type=_bound, default=t.max_kqa_drop,
                   help=f"most KQA drop, points (default: {t.max_kqa_drop})")
    p.add_argument("--max-fluency-drop", type=_bound, default=t.max_fluency_drop,
                   help=f"most fluency drop, n-gram entropy (default: {t.max_fluency_drop})")
    p.add_argument("--max-cut-increase", type=_bound, default=t.max_cut_increase,
                   help="most increase in the %% of answers that run to the token limit, points "
                        f"(default: {t.max_cut_increase})")
    p.add_argument("--max-failed-edits", type=_bound, default=t.max_failed_edits,
                   help=f"most edits whose own validation failed, %% of those checked (default: {t.max_failed_edits})")
    p.add_argument("--try", dest="tries", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                   help="a setting to run right after the starting one, in the search's own dimension names "
                        "(e.g. 'layer_rule=fixed,layers=16'; dimensions it does not name are drawn); repeat for more. "
                        "Queued once per study")
    p.add_argument("--confirm-per-category", type=int, default=None, metavar="N",
                   help="after the study, run the best settings and the starting ones on one case of each of N "
                        "questions per category that the study's cases do not ask, and report the paired change "
                        "there (the best trial's lead on its own cases is biased upward); a rerun may add it")
    p.add_argument("--no-prune", action="store_true", help="run every trial to its last case")
    p.add_argument("--prune-after", type=int, default=3, help="cases before the median pruner may stop a trial "
                                                              "(default: 3)")
    p.add_argument("--progress", action="store_true", help="a progress bar per trial")
    p.set_defaults(func=run)


def run(args) -> int:
    from detoxedit.settings import run_config
    from detoxedit.tune.objective import Targets
    from detoxedit.tune.study import TuneOptions, run_tune

    cfg = run_config(args, defaults=TUNE_DEFAULTS)
    targets = Targets(objective=args.objective, min_ds=args.min_ds, max_overrefusal=args.max_overrefusal,
                      max_kqa_drop=args.max_kqa_drop, max_fluency_drop=args.max_fluency_drop,
                      max_cut_increase=args.max_cut_increase, max_failed_edits=args.max_failed_edits)
    opts = TuneOptions(trials=args.trials, prune=not args.no_prune, prune_after=args.prune_after,
                       tries=tuple(args.tries), confirm_per_category=args.confirm_per_category)
    summary = run_tune(cfg, targets, opts, args.out, progress=args.progress)
    best = summary.get("best")
    if best is None:
        print(f"no trial finished; see {args.out}/tune.html")
        return 1
    state = "meets every bound" if summary["feasible"] else "closest to the bounds (none met them all)"
    print(f"best: trial {best['number']} ({state})\nsettings: {args.out}/best.yaml\npage: {args.out}/tune.html")
    return 0
