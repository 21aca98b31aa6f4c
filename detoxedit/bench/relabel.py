"""Label a finished run's responses with another judge, without regenerating them.

The new labels are stored beside the old ones under the judge's spec, so ``detoxedit report RUN_DIR
--judge SPEC`` can compare judges on the same responses. Each records file is rewritten atomically.

The edit validation stored by the runner (``record["edit"]["validation"]``, whose ``answer_safe`` is the
run's judge's verdict on the edited answer to the edited input) is left as written: ``report`` and
``compare`` read it through :func:`detoxedit.bench.records.edit_validation`, which recomputes
``answer_safe``, the status and the judge's reason from the labels of the judge being reported. The
over-refusal answers are scored by a fixed detector, not a judge, so relabelling does not touch them.
"""

from __future__ import annotations

from pathlib import Path

from detoxedit.io import atomic_write_jsonl, read_jsonl
from detoxedit.judges import get_judge


def relabel(run_dir, spec: str, batch: int = 64) -> int:
    """Label every response of the run in ``run_dir`` with judge ``spec``; returns the number of cases."""
    judge = get_judge(spec)
    n = 0
    for path in sorted(Path(run_dir).glob("records*.jsonl")):
        records, _ = read_jsonl(path)
        for start in range(0, len(records), batch):
            chunk = records[start:start + batch]
            prompts, responses, where = [], [], []
            for rec in chunk:
                for side in ("vanilla", "edited"):
                    judged = rec.get("judged_prompts", {}).get(side, {})
                    for key, response in rec[side].items():
                        # the prompt the runner's judge read; runs older than that field: the raw input
                        prompts.append(judged.get(key, rec["inputs"][key]))
                        responses.append(response)
                        where.append((rec, side, key))
            for (rec, side, key), label in zip(where, judge.judge(prompts, responses)):
                rec.setdefault("labels", {}).setdefault(spec, {}).setdefault(side, {})[key] = label
        atomic_write_jsonl(path, records)
        n += len(records)
    return n
