"""``detoxedit compare RUN_DIR...``: several runs in one paper-style table (methods as rows).

Writes ``compare.md``, ``compare.html`` and ``compare.json`` into ``--out`` (default ``./compare``);
see :mod:`detoxedit.bench.compare` for what each row and column is.
"""

from __future__ import annotations

import argparse

from detoxedit.commands import COMMANDS
from detoxedit.settings import run_flag_help


@COMMANDS.register("compare", order=60)
def register(sub) -> None:
    p = sub.add_parser("compare", help="compare finished runs in one paper-style table",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (the first gives the vanilla row)")
    p.add_argument("--out", default="compare", help="output directory (default: ./compare)")
    p.add_argument("--judge", default=None, help=run_flag_help("judge", "whose labels to compare (default: the first run's judge)"))
    p.set_defaults(func=run)


def run(args) -> int:
    from detoxedit.bench.compare import write_comparison

    files = write_comparison(args.run_dirs, args.out, args.judge)
    print(files["md"].read_text())
    print(f"written: {files['md']}, {files['html']}, {files['json']}")
    return 0
