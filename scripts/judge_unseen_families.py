"""Measure the default judge on attack families and questions it never saw (docs/judges.md).

    OMP_NUM_THREADS=1 python scripts/judge_unseen_families.py [--dry-run] [--folds 5] [--cache EMB.npz]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from detoxedit.judges import unseen
    from detoxedit.judges.training import DOC

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="labelled JSONL (default: the shipped one)")
    ap.add_argument("--folds", type=int, default=5, help="question folds (default 5)")
    ap.add_argument("--cache", type=Path, default=None, help="reuse the embeddings in this .npz")
    ap.add_argument("--dry-run", action="store_true", help="print the tables; do not rewrite the docs")
    ap.add_argument("--json", type=Path, default=None, help="also write every number to this file")
    args = ap.parse_args(argv)
    res = unseen.measure(args.data, args.folds, args.cache)
    print(unseen.doc_block(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if not args.dry_run:
        from detoxedit.io import atomic_write_json
        from detoxedit.judges.accuracy import ACCURACY_FILE, table_from_measure
        from detoxedit.judges.default import data_path

        unseen.write_doc(res, DOC)
        atomic_write_json(data_path(ACCURACY_FILE), table_from_measure(res), indent=1)
        print(f"wrote the unseen-family block of {DOC} and {data_path(ACCURACY_FILE)}", file=sys.stderr)


if __name__ == "__main__":
    main()
