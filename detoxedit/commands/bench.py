"""``detoxedit bench``: run a detoxification method over a SafeEdit split, one record per case.

Resumable: rerun the same command and finished cases are skipped. ``--shard i/n`` lets n processes
split one run (each writes its own records file in the same RUN_DIR); ``detoxedit report RUN_DIR``
aggregates them. Every run flag is a field of ``detoxedit.config.RunConfig``.
"""

from __future__ import annotations

import argparse

from detoxedit.commands import COMMANDS


@COMMANDS.register("bench", order=30)
def register(sub) -> None:
    from detoxedit.settings import add_run_arguments

    p = sub.add_parser("bench", help="run a method over a SafeEdit split (resumable, shardable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    p.add_argument("--shard", default=None, help="i/n: this process runs cases i, i+n, i+2n, ...")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from detoxedit.bench.runner import run_bench
    from detoxedit.config import parse_shard
    from detoxedit.settings import run_config

    cfg = run_config(args)
    path = run_bench(cfg, args.out, parse_shard(args.shard), progress=not args.no_progress)
    print(f"records: {path}\nnext: detoxedit report {args.out}")
    return 0
