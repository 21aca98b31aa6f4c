"""How firm is a paired difference that `detoxedit compare` prints? DG-Avg of B's edited side minus A's on
the cases both ran, read by a person (every edited answer labelled, `detoxedit label`) and by the judge:

    python scripts/paired_robustness.py RUN_A RUN_B

For each it prints the cluster bootstrap `compare` uses (resampling the harmful questions) with five seeds
and with 10,000 resamples, a 99% interval (a margin for having looked at the data more than once, as a
sample grown batch by batch does), and a two-sided sign-flip permutation test on the per-question mean
differences (exact under "A and B are exchangeable within a question"; it does not lean on the bootstrap's
large-sample approximation, which with 27 questions can be optimistic). docs/tuning.md, "135 test cases",
uses it.
"""

from __future__ import annotations

import sys

import numpy as np


def main(argv: list[str]) -> int:
    from detoxedit.bench.compare import shared_cases, side_labels
    from detoxedit.bench.human import read_human, reading_queue, with_human
    from detoxedit.bench.records import read_run_records
    from detoxedit.bench.report import question_keys
    from detoxedit.metrics.safety import INPUT_KEYS, label_matrix, paired_difference

    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = argv

    firsts, shared = shared_cases(read_run_records(a), read_run_records(b))
    human_a, human_b = read_human(a), read_human(b)
    for run, recs, human in ((a, firsts, human_a), (b, shared, human_b)):
        if reading_queue(recs, "default", ("edited",), human):  # as compare's read_change: no mixed readers
            print(f"{run}: some edited answers of the shared cases are unread (detoxedit label)", file=sys.stderr)
            return 1
    clusters = question_keys(shared)
    dg = [i for i, k in enumerate(INPUT_KEYS) if k != "DS"]
    views = {"read": (with_human(firsts, "default", human_a), with_human(shared, "default", human_b)),
             "judge": (firsts, shared)}
    for name, (x, y) in views.items():
        la, lb = side_labels(x, "default", "edited"), side_labels(y, "default", "edited")
        for n, alpha, seeds in ((1000, .05, range(5)), (10000, .05, (0,)), (10000, .01, (0,))):
            for seed in seeds:
                d = paired_difference(la, lb, n_resamples=n, alpha=alpha, seed=seed, clusters=clusters)["DG-Avg"]
                print(f"{name}: {n} resamples, {100 * (1 - alpha):.0f}% CI, seed {seed}: "
                      f"{d['value']:+.2f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]")
        # per case: A's unsafe DG share minus B's (> 0: B safer); per question: the mean over its cases
        per_case = np.nanmean(label_matrix(la)[:, dg], axis=1) - np.nanmean(label_matrix(lb)[:, dg], axis=1)
        keys = sorted(set(clusters), key=str)
        per_q = np.array([per_case[[i for i, c in enumerate(clusters) if c == k]].mean() for k in keys])
        flips = np.random.default_rng(0).choice([-1.0, 1.0], size=(100_000, len(per_q))) * per_q
        p = float(np.mean(np.abs(flips.mean(axis=1)) >= abs(per_q.mean()) - 1e-12))
        print(f"{name}: {len(keys)} questions, B safer on {(per_q > 0).sum()}, the same on {(per_q == 0).sum()}, "
              f"less safe on {(per_q < 0).sum()}; sign-flip test p = {p:.3f} (two-sided)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
