"""Fit the default judge's head, measure it with prompt-held-out cross-validation, write the numbers.

The command line of :mod:`detoxedit.judges.training`, where the protocol is (data, features, nested
grouped CV, head fitting, the docs/judges.md table). Run::

    python scripts/train_default_judge.py            # fit, measure, write head + docs
    python scripts/train_default_judge.py --dry-run  # measure only
    python scripts/train_default_judge.py --explore /tmp/explore.json  # the variants that were not shipped
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detoxedit.judges.training import TrainOptions, run  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="labelled JSONL (default: the shipped one)")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=128, help="MiniLM truncation (tokens)")
    ap.add_argument("--dry-run", action="store_true", help="measure only; write neither head nor docs")
    ap.add_argument("--use-prompt", choices=("auto", "yes", "no"), default="auto",
                    help="ship the head with the prompt features (auto: if >1 point better held-out)")
    ap.add_argument("--add-pyrit", action="store_true",
                    help="also measure a head trained on our labels + pyrit's (reported, never shipped)")
    ap.add_argument("--no-written", action="store_true",
                    help="leave out the written safe responses that the head also trains on (an experiment)")
    ap.add_argument("--cache", type=Path, default=None, help="reuse the embeddings in this .npz (experiments)")
    ap.add_argument("--explore", type=Path, default=None, metavar="OUT_JSON",
                    help="only measure the variants tried beyond the shipped design (sentence pooling, "
                         "prompt-overlap cues) with the same nested CV; write the numbers to OUT_JSON")
    ap.add_argument("--balanced", action="store_true",
                    help="weigh both labels equally in the fit (measured, not shipped: docs/judges.md)")
    run(TrainOptions(**vars(ap.parse_args(argv))))


if __name__ == "__main__":
    main()
