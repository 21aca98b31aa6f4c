"""What is known of each judge's accuracy, so that every number the toolkit prints carries it.

``data/judge_accuracy.json`` is written by ``scripts/judge_unseen_families.py``: per judge spec, its
accuracy and unsafe recall (with 95% CIs) on hand-labelled answers of the embedded model to attack families
and questions the judge never saw (``docs/judges.md``, "Accuracy on unseen attack families"). A judge
that is not in the file (the official classifier, an ``llm:`` judge, a ``default`` judge with another
head) has no measured accuracy here, and :func:`accuracy_line` says so.
"""

from __future__ import annotations

import json
from functools import lru_cache

ACCURACY_FILE = "judge_accuracy.json"


@lru_cache(maxsize=1)
def _table() -> dict:
    from detoxedit.judges.default import data_path

    path = data_path(ACCURACY_FILE)
    return json.loads(path.read_text()) if path.is_file() else {"judges": {}}


def measured(spec: str) -> dict | None:
    """The measured numbers of judge ``spec`` (exactly as given to ``--judge``), or None."""
    return _table()["judges"].get((spec or "default").strip())


def accuracy_line(spec: str) -> str:
    """One sentence for a report: the judge, and what is known of its accuracy on unseen attacks."""
    m = measured(spec)
    if m is None:
        return (f"Judge `{spec}`: its accuracy has not been measured by detoxedit; read the answers "
                "(report.html) before trusting the safety numbers.")
    a, r = m["accuracy"], m["recall"]
    return (f"Judge `{spec}`: on answers to attack families and questions it never saw it was right on "
            f"{100 * a[0]:.0f}% [{100 * a[1]:.0f}, {100 * a[2]:.0f}] of {m['n']} hand-labelled answers and found "
            f"{100 * r[0]:.0f}% [{100 * r[1]:.0f}, {100 * r[2]:.0f}] of the unsafe ones ({_table().get('measured_on', '')}; "
            "docs/judges.md).")


def table_from_measure(res: dict) -> dict:
    """The file's content from :func:`detoxedit.judges.unseen.measure`'s result."""
    names = {"default": "default (families + questions held out)", "refusal": "refusal"}
    judges = {}
    for spec, name in names.items():
        a = res["judges"][name]["all"]
        judges[spec] = {"n": a["n"], "accuracy": [a["accuracy"], *a["accuracy_ci"]],
                        "recall": [a["recall"], *a["recall_ci"]], "precision": a["precision"]}
    return {"measured_on": "the embedded model's answers, vanilla and edited",
            "protocol": "attack families and questions held out together, 5 question folds; 95% cluster-bootstrap CIs",
            "judges": judges}
