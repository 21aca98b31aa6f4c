"""Human labels beside a run: a person reads answers and sets safe/unsafe; reports use them.

Labels live in ``RUN_DIR/human_labels.jsonl``, one JSON object per line, **append-only** (a change is a
new line; the last line for an answer wins), so nothing a person set is lost when the run is resumed,
relabelled by another judge or reported again. Each line::

    {"case_id", "side": "vanilla"|"edited", "key": "DS"|"DG_onlyQ"|..., "label": 0|1,
     "who", "when" (UTC, ISO 8601), "judge" (the spec shown to the reader), "judge_label",
     "judge_version" (the judge head's file fingerprint, where it has one)}

:func:`reading_queue` orders the answers a person should read first: where the judge is least sure
(its probability nearest 0.5, for judges that give one), then answers the run's judges disagree on.
:func:`with_human` gives the records with a person's label in place of the judge's wherever there is
one, so a report can show each metric both ways, and :func:`agreement` the judge's agreement with the
labels a person set.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from detoxedit.bench.records import RecordWriter
from detoxedit.io import read_jsonl

LABELS_FILE = "human_labels.jsonl"
SIDES = ("vanilla", "edited")


def labels_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LABELS_FILE


def read_human(run_dir: str | Path) -> dict[tuple[str, str, str], dict]:
    """``(case_id, side, key) -> the last line set for it``. A torn last line (a killed writer) is
    skipped; invalid JSON elsewhere fails naming the line (:func:`detoxedit.io.read_jsonl`)."""
    path = labels_path(run_dir)
    out: dict[tuple[str, str, str], dict] = {}
    if not path.is_file():
        return out
    for e in read_jsonl(path)[0]:
        if isinstance(e, dict) and e.get("label") in (0, 1) and e.get("side") in SIDES:
            out[(str(e["case_id"]), e["side"], e["key"])] = e
    return out


def append_label(run_dir: str | Path, entry: dict) -> dict:
    """Append one label line, as run records are written (:class:`detoxedit.bench.records.RecordWriter`:
    a torn last line is dropped first, then one whole line is written and synced, so a label a person
    set survives a crash right after). ``who`` and ``when`` are filled in when missing."""
    if entry.get("label") not in (0, 1):
        raise ValueError(f"a human label is 0 (safe) or 1 (unsafe), got {entry.get('label')!r}")
    if entry.get("side") not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {entry.get('side')!r}")
    e = {"case_id": str(entry["case_id"]), "side": entry["side"], "key": entry["key"], "label": int(entry["label"]),
         "who": entry.get("who") or os.environ.get("USER") or "unknown",
         "when": entry.get("when") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "judge": entry.get("judge"), "judge_label": entry.get("judge_label"),
         "judge_version": entry.get("judge_version")}
    RecordWriter(labels_path(run_dir)).append(e)
    return e


def judge_version(spec: str) -> str | None:
    """A fingerprint of the default judge's head file (``default`` only; other judges: None)."""
    if (spec or "default").strip() != "default":
        return None
    from detoxedit.judges.default import HEAD_FILE, data_path

    return "head-" + hashlib.sha256(data_path(HEAD_FILE).read_bytes()).hexdigest()[:12]


@dataclass
class Item:
    """One answer to read."""

    case_id: str
    side: str
    key: str
    prompt: str
    answer: str
    judge_label: float | None
    p_unsafe: float | None
    """The judge's probability that the answer is unsafe, where the judge gives one."""
    disagree: bool
    """The run's judges (all whose labels the record holds) do not agree on it."""
    human: dict | None

    @property
    def uncertainty(self) -> float:
        """0 (sure) .. 1 (a coin flip); from the probability, else 1 for a disagreement or a 0.5 label."""
        if self.p_unsafe is not None:
            return 1.0 - 2.0 * abs(self.p_unsafe - 0.5)
        if self.disagree or self.judge_label == 0.5:
            return 1.0
        return 0.0


def items(records: list[dict], judge: str, sides: tuple[str, ...] = SIDES, human: dict | None = None) -> list[Item]:
    """Every judged answer of the run on ``sides``, with the judge's label and any human label."""
    human = human or {}
    out = []
    for r in records:
        cid = str(r["case_id"])
        prompts = r.get("judged_prompts") or {}
        for side in sides:
            for key, answer in (r.get(side) or {}).items():
                labels = {j: (v.get(side) or {}).get(key) for j, v in (r.get("labels") or {}).items()}
                labels = {j: v for j, v in labels.items() if v is not None}
                out.append(Item(cid, side, key, (prompts.get(side) or {}).get(key, ""), answer,
                                labels.get(judge), None, len(set(labels.values())) > 1,
                                human.get((cid, side, key))))
    return out


def reading_queue(records: list[dict], judge: str, sides: tuple[str, ...] = SIDES, human: dict | None = None,
                  scorer=None, include_read: bool = False) -> list[Item]:
    """The answers not yet read by a person (all, with ``include_read``), least certain first.
    ``scorer(prompts, answers) -> probabilities`` (a judge's ``scores``) supplies the uncertainty."""
    todo = [it for it in items(records, judge, sides, human) if include_read or it.human is None]
    if scorer is not None and todo:
        for it, p in zip(todo, scorer([it.prompt for it in todo], [it.answer for it in todo])):
            it.p_unsafe = float(p)
    order = {s: i for i, s in enumerate(SIDES)}
    return sorted(todo, key=lambda it: (-round(it.uncertainty, 6), order[it.side], it.case_id, it.key))


def with_human(records: list[dict], judge: str, human: dict) -> list[dict]:
    """A copy of ``records`` whose ``labels[judge]`` carry the human label wherever one was set."""
    out = copy.deepcopy(records)
    for r in out:
        lab = (r.setdefault("labels", {})).setdefault(judge, {})
        for side in SIDES:
            for key in (r.get(side) or {}):
                h = human.get((str(r["case_id"]), side, key))
                if h is not None:
                    lab.setdefault(side, {})[key] = float(h["label"])
    return out


def agreement(records: list[dict], judge: str, human: dict) -> dict:
    """How the judge's labels compare with a person's, on the answers a person read (0.5 labels of
    empty answers count as disagreement): counts, agreement rate and the confusion."""
    n = agree = 0
    confusion = {"judge safe, person unsafe": 0, "judge unsafe, person safe": 0, "judge 0.5": 0}
    for it in items(records, judge, SIDES, human):
        if it.human is None or it.judge_label is None:
            continue
        n += 1
        h, j = it.human["label"], it.judge_label
        if j == h:
            agree += 1
        elif j == 0.5:
            confusion["judge 0.5"] += 1
        elif j == 0:
            confusion["judge safe, person unsafe"] += 1
        else:
            confusion["judge unsafe, person safe"] += 1
    return {"read": n, "agree": agree, "rate": agree / n if n else None, "confusion": confusion}
