"""``detoxedit label RUN_DIR``: read a run's answers in the terminal, least certain first, and set labels.

Each answer is shown with its prompt and the judge's verdict; type ``0`` (safe), ``1`` (unsafe), ``s``
(skip) or ``q`` (quit). Every label is appended to ``RUN_DIR/human_labels.jsonl`` at once (who, when,
the judge and its version beside it), so quitting or a crash loses nothing; ``report`` and ``compare``
then show each metric by the judge and with the person's labels, and the judge's agreement with them.
"""

from __future__ import annotations

import sys

from detoxedit.commands import COMMANDS
from detoxedit.settings import run_flag_help

PROMPT_CHARS = 600


@COMMANDS.register("label", order=85)
def register(sub) -> None:
    p = sub.add_parser("label", help="read a run's answers and set human safety labels (terminal)")
    p.add_argument("run_dir")
    p.add_argument("--judge", default=None, help=run_flag_help("judge", "the judge whose verdicts are shown and "
                                                                         "ordered by (default: the run's)"))
    p.add_argument("--side", choices=("edited", "vanilla", "both"), default="both")
    p.add_argument("--who", default=None, help="the reader's name (default: $USER)")
    p.add_argument("--cases", default=None, help=run_flag_help("cases", "only their answers are shown"))
    p.add_argument("--stop-after", type=int, default=None, metavar="N", help="stop after N answers")
    p.add_argument("--again", action="store_true", help="also show answers a person already labelled")
    p.add_argument("--no-scores", action="store_true",
                   help="do not load the judge for its probabilities (order by label disagreement only)")
    p.set_defaults(func=run)


def _scorer(spec: str):
    from detoxedit.judges import get_judge

    judge = get_judge(spec)
    return getattr(judge, "scores", None)


def run(args) -> int:
    from detoxedit.bench import human
    from detoxedit.bench.report import load_run

    cfg, records = load_run(args.run_dir)
    spec = args.judge or cfg.get("judge") or "default"
    sides = human.SIDES if args.side == "both" else (args.side,)
    if args.cases:  # before the judge scores anything
        wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
        unknown = wanted - {str(r["case_id"]) for r in records}
        if unknown:
            from detoxedit.errors import DetoxEditError
            raise DetoxEditError(f"{args.run_dir}: no case {', '.join(sorted(unknown))} in this run")
        records = [r for r in records if str(r["case_id"]) in wanted]
    labels = human.read_human(args.run_dir)
    scorer = None if args.no_scores else _scorer(spec)
    queue = human.reading_queue(records, spec, sides, labels, scorer, include_read=args.again)
    if args.stop_after is not None:
        queue = queue[: args.stop_after]
    version = human.judge_version(spec)
    print(f"{len(queue)} answers to read in {args.run_dir} (judge '{spec}'; least certain first). "
          "0 = safe, 1 = unsafe, s = skip, q = quit.")
    done = 0
    for i, it in enumerate(queue, 1):
        verdict = {0.0: "safe", 1.0: "unsafe", 0.5: "empty (0.5)"}.get(it.judge_label, "not judged")
        p = "" if it.p_unsafe is None else f", p(unsafe) {it.p_unsafe:.2f}"
        print(f"\n[{i}/{len(queue)}] case {it.case_id} · {it.side} · {it.key} · judge: {verdict}{p}"
              + (f" · you said {'unsafe' if it.human['label'] else 'safe'}" if it.human else ""))
        text = it.prompt if len(it.prompt) <= PROMPT_CHARS else "…" + it.prompt[-PROMPT_CHARS:]
        print(f"PROMPT: {text}\nANSWER: {it.answer}")
        while True:
            try:
                ans = input("label [0/1/s/q]> ").strip().lower()
            except EOFError:
                ans = "q"
            if ans in ("0", "1", "s", "q"):
                break
            print("type 0 (safe), 1 (unsafe), s (skip) or q (quit)")
        if ans == "q":
            break
        if ans == "s":
            continue
        human.append_label(args.run_dir, {"case_id": it.case_id, "side": it.side, "key": it.key, "label": int(ans),
                                          "who": args.who, "judge": spec, "judge_label": it.judge_label,
                                          "judge_version": version})
        done += 1
    total = len(human.read_human(args.run_dir))
    print(f"\nset {done} labels; {total} answers of this run have a human label "
          f"({human.labels_path(args.run_dir)}). See: detoxedit report {args.run_dir}", file=sys.stdout)
    return 0
