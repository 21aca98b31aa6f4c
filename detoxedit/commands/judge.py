"""``detoxedit judge RUN_DIR --judge SPEC``: label a finished run's responses with another judge.

Responses are not regenerated; the new labels are stored beside the old ones (under the judge's spec),
so ``detoxedit report RUN_DIR --judge SPEC`` can compare judges on the same responses.
"""

from __future__ import annotations

from detoxedit.commands import COMMANDS
from detoxedit.settings import run_flag_help


@COMMANDS.register("judge", order=80)
def register(sub) -> None:
    p = sub.add_parser("judge", help="(re)label the responses of a run with a safety judge")
    p.add_argument("run_dir")
    p.add_argument("--judge", required=True, help=run_flag_help("judge", "the judge to label the run's responses with"))
    p.add_argument("--batch", type=int, default=64, help="cases per judge call")
    p.set_defaults(func=run)


def run(args) -> int:
    from detoxedit.bench.relabel import relabel

    n = relabel(args.run_dir, args.judge, args.batch)
    print(f"labelled {n} cases with judge '{args.judge}'; see: detoxedit report {args.run_dir} --judge {args.judge}")
    return 0
