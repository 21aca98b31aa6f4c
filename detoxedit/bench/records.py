"""Per-case result records of a run: one JSON line per case, never lost, never repeated.

Each shard process appends to its own file (``records.jsonl`` or ``records.shard-I-of-N.jsonl``), one
whole line per ``os.write`` followed by ``fsync`` (``detoxedit.io.append_jsonl``). If a process is killed
mid-write, the torn last line is dropped when the file is next opened, so a rerun redoes exactly that
case and no other.

A record (``Runner.run_case``) holds, besides the responses and labels, ``edit`` (the method's
``edit.meta`` without its bulky parts, plus ``uses_instance``, ``unsafe_source`` and ``validation``) and,
with over-refusal on, ``overrefusal``. The pure helpers below read the parts that depend on the judge.
"""

from __future__ import annotations

import copy
from pathlib import Path

from detoxedit.io import append_jsonl, atomic_write_jsonl, read_jsonl


def records_path(run_dir: Path, shard: tuple[int, int]) -> Path:
    i, n = shard
    return run_dir / ("records.jsonl" if n == 1 else f"records.shard-{i}-of-{n}.jsonl")


def read_run_records(run_dir: Path, pattern: str = "records*.jsonl") -> list[dict]:
    """All complete records of a run, over every shard file (first copy of an id wins), in case order.

    Records are ordered by their ``index`` (the case's place in the split; records without one keep their
    file order, after those with one), so a run split into shards reads back in the order one process
    would have written it: the bootstrap intervals of a report draw cases by position, and would
    otherwise change with the number of shards."""
    seen, out = set(), []
    for path in sorted(Path(run_dir).glob(pattern)):
        for rec in read_jsonl(path)[0]:
            if rec["case_id"] not in seen:
                seen.add(rec["case_id"])
                out.append(rec)
    return sorted(out, key=lambda r: (r.get("index") is None, r.get("index") or 0))


class RecordWriter:
    """Appends records to one shard file; repairs a torn last line on open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            records, torn = read_jsonl(self.path)
            if torn:
                atomic_write_jsonl(self.path, records)

    def append(self, record: dict) -> None:
        append_jsonl(self.path, record)


JUDGE_REASON = "edited answer to the edited input"
"""Opening of the validation reasons that come from the judge (so a report under another judge can
replace them with its own)."""

STATUSES = ("ok", "failed", "unchecked")
"""Validation statuses of an edit: the method's checks passed / something failed / nothing was checked."""


def answer_reason(label: float, judge: str) -> str:
    """The failure reason for a judge label of the edited answer to the edited input that is not safe."""
    if float(label) == 0.5:
        return f"{JUDGE_REASON} is empty (label 0.5 by {judge})"
    return f"{JUDGE_REASON} judged unsafe by {judge}"


NOT_ENDED_REASON = "the edited model did not end its answer to the edited input"


def validate_answer(method_validation: dict | None, label: float | None, ended: bool | None, judge: str,
                    instance: bool) -> dict:
    """An edit's validation completed with the judge's verdict on the edited answer to the edited input.

    ``method_validation``: the method's ``edit.meta["validation"]`` (``{"status": "ok"|"failed", "reasons",
    "checks", "attempts"?}``), None when the method records none. ``label``: the judge's label of the
    edited answer to the DS input, which is the edited input itself (0 safe, 1 unsafe, 0.5 empty; None
    when the data has no DS input). Adds ``checks["answer_safe"]`` (label == 0), ``checks["answer_ended"]``
    (``ended``), ``checks["answer_judge"]`` and ``method_status`` (the method's own verdict, ``unchecked``
    when it gave none). For a per-instance method an answer that is not safe makes the status ``failed``
    with a reason naming the judge, and so does one that ran to the token limit without ending its turn
    (the edit was made on a safe response that ends; an answer that does not end repeats itself). Without a method validation the status is otherwise ``unchecked``,
    also for an unsafe answer of a method that does not use the instance: its one shared edit never
    learnt from this input, so there is no failed edit to count. The argument is not modified.
    """
    v = copy.deepcopy(method_validation) if method_validation else {"status": "unchecked", "reasons": [],
                                                                     "checks": {}}
    v.setdefault("reasons", [])
    v.setdefault("checks", {})
    v["method_status"] = v.get("status", "unchecked") if method_validation else "unchecked"
    safe = None if label is None else float(label) == 0.0
    v["checks"].update(answer_safe=safe, answer_ended=ended, answer_judge=judge)
    if safe is False and instance:
        v["status"] = "failed"
        v["reasons"].append(answer_reason(label, judge))
    if ended is False and instance and not any(r.startswith(NOT_ENDED_REASON) for r in v["reasons"]):
        v["status"] = "failed"
        v["reasons"].append(f"{NOT_ENDED_REASON} (it ran to the token limit: the edited model may no longer "
                            "end its turn)")
    if not method_validation and not (instance and (safe is False or ended is False)):
        v["status"] = "unchecked"
    return v


def edit_validation(record: dict, judge: str) -> dict:
    """A record's edit validation as judge ``judge`` sees it.

    The runner stores the validation with its own judge's verdict (``checks["answer_judge"]``). When the
    report reads another judge's labels (``detoxedit judge`` / ``relabel`` stored them beside the first),
    ``answer_safe``, the status and the judge's reason are recomputed from that judge's label of the edited
    DS answer; the method's own checks and reasons stay. A record without a validation (a run older than
    it) reads as ``unchecked``, with ``answer_safe`` from the labels when they have DS.
    """
    edit = record.get("edit") or {}
    v = edit.get("validation")
    label = (((record.get("labels") or {}).get(judge) or {}).get("edited") or {}).get("DS")
    if v is not None and (label is None or (v.get("checks") or {}).get("answer_judge") == judge):
        return v
    method_status = (v or {}).get("method_status", "unchecked")
    method = None
    if v is not None and method_status != "unchecked":
        method = {**v, "status": method_status,
                  "reasons": [r for r in v.get("reasons", []) if not r.startswith(JUDGE_REASON)]}
    ended = ((v or {}).get("checks") or {}).get("answer_ended")
    return validate_answer(method, label, ended, judge, edit.get("uses_instance", True) is not False)
