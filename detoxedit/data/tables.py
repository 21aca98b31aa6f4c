"""The builder's input tables: questions, attack templates, knowledge constraints and response maps.

Users give them as CSV, TSV, JSONL or a JSON list, with the column names (and aliases) of
:data:`_ALIASES` (listed in ``docs/data.md``). Each parser collects every problem of a file, with file,
row and column, and raises them together as a :class:`~detoxedit.data.records.ProblemsError`. The
built-in parts (:mod:`detoxedit.data.builtin`) are read with the same parsers.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from detoxedit.data.records import (
    BUILD_SPLITS,
    CATEGORIES,
    FAMILIES,
    PLACEHOLDER,
    Attack,
    Constraint,
    Problem,
    ProblemsError,
    Question,
    canonical_split,
    normalize_category,
)
from detoxedit.errors import DataError, DetoxEditError

#: Column names each role accepts, first present wins (``q.`` questions, ``a.`` attacks, ``k.``
#: constraints, ``s.``/``u.`` the key and text of ``--safe`` and ``--unsafe-from`` maps).
_ALIASES: dict[str, tuple[str, ...]] = {
    "q.id": ("id", "question id", "question_id", "qid"),
    "q.category": ("category", "unsafety category", "unsafety_category"),
    "q.question": ("question", "prompt", "goal", "behavior", "behaviour", "text"),
    "q.safe": ("safe", "safe generation", "safe_generation", "safe response", "safe_response"),
    "a.id": ("id", "attack id", "attack_id"),
    "a.family": ("family", "attack category", "attack_category"),
    "a.name": ("name", "attack name", "attack_name"),
    "a.template": ("template", "attack prompt", "attack_prompt", "prompt"),
    "k.id": ("id",),
    "k.prompt": ("prompt", "instruction", "question"),
    "k.answer": ("answer", "output", "response"),
    "s.key": ("id", "question id", "question_id", "question"),
    "s.text": ("safe", "safe generation", "safe_generation", "response", "answer"),
    "u.key": ("id", "case", "prompt", "adversarial prompt", "adversarial_prompt", "input"),
    "u.text": ("response", "unsafe", "unsafe generation", "unsafe_generation", "output"),
}


def read_table(path: str | os.PathLike) -> list[dict]:
    """Rows of a CSV, JSONL or JSON-list file as dicts (keys as written; values as parsed)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("no such file", file=str(p)) from None
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        return [dict(r) for r in reader]
    stripped = text.lstrip()
    if suffix == ".json" or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON at line {err.lineno}: {err.msg}", file=str(p)) from None
        if not isinstance(data, list):
            raise DataError("expected a JSON list of objects", file=str(p))
        rows = data
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"invalid JSON on line {n}: {err.msg}", file=str(p)) from None
    bad = [Problem(str(p), i, None, None, "expected an object") for i, r in enumerate(rows)
           if not isinstance(r, dict)]
    if bad:
        raise ProblemsError(bad)
    return rows


def _get(row: Mapping, role: str) -> Any:
    for key in _ALIASES[role]:
        if key in row and row[key] not in (None, ""):
            return row[key]
    return None


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "y", "unseen")


def parse_questions(rows: Sequence[Mapping], file: str, source: str = "user") -> list[Question]:
    """Questions from table rows; every problem is collected, then raised together."""
    out, problems, seen = [], [], set()
    for i, row in enumerate(rows):
        qid = _get(row, "q.id")
        qid = str(qid) if qid is not None else f"Q{i + 1:04d}"
        text, cat_raw = _get(row, "q.question"), _get(row, "q.category")
        where = dict(file=file, index=i, record_id=qid)
        if not isinstance(text, str) or not text.strip():
            problems.append(Problem(**where, field="question", message="missing or empty"))
        cat = normalize_category(cat_raw) if cat_raw is not None else None
        if cat is None:
            problems.append(Problem(**where, field="category", message=(
                f"unknown category {cat_raw!r}; expected one of {', '.join(CATEGORIES)}")))
        if qid in seen:
            problems.append(Problem(**where, field="id", message="duplicate id"))
        seen.add(qid)
        split = row.get("split")
        if split:
            try:
                split = canonical_split(str(split))
                if split not in BUILD_SPLITS:
                    raise DetoxEditError(split)
            except DetoxEditError:
                problems.append(Problem(**where, field="split", message=f"unknown split {split!r}"))
        safe = _get(row, "q.safe")
        if text and cat:
            out.append(Question(qid, cat, text.strip(), safe.strip() if isinstance(safe, str) else None,
                                split or None, source))
    if problems:
        raise ProblemsError(problems)
    return out


def parse_attacks(rows: Sequence[Mapping], file: str, source: str = "user") -> list[Attack]:
    """Attack templates from table rows; the template must hold the placeholder exactly once."""
    out, problems, seen = [], [], set()
    for i, row in enumerate(rows):
        aid = _get(row, "a.id")
        aid = str(aid) if aid is not None else f"A{i + 1:03d}"
        where = dict(file=file, index=i, record_id=aid)
        tpl = _get(row, "a.template")
        if not isinstance(tpl, str) or not tpl.strip():
            problems.append(Problem(**where, field="template", message="missing or empty"))
        elif tpl.count(PLACEHOLDER) != 1:
            problems.append(Problem(**where, field="template", message=(
                f"must contain the placeholder {PLACEHOLDER} exactly once "
                f"(found {tpl.count(PLACEHOLDER)})")))
        family = _get(row, "a.family") or ""
        fam = next((f for f in FAMILIES if f.lower() == str(family).strip().lower()), None)
        if family and fam is None:
            problems.append(Problem(**where, field="family", message=(
                f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}"), severity="error"))
        if aid in seen:
            problems.append(Problem(**where, field="id", message="duplicate id"))
        seen.add(aid)
        split = row.get("split")
        if split:
            try:
                split = canonical_split(str(split)) if str(split).lower() != "unseen" else "unseen"
                if split == "test_ALL":
                    raise DetoxEditError(split)
            except DetoxEditError:
                problems.append(Problem(**where, field="split", message=f"unknown split {split!r}"))
        unseen = _as_bool(row.get("unseen", False)) or split == "unseen"
        if isinstance(tpl, str) and tpl.count(PLACEHOLDER) == 1:
            out.append(Attack(aid, fam or str(family), str(_get(row, "a.name") or aid), tpl, unseen,
                              None if split in (None, "", "unseen") else split, source))
    if problems:
        raise ProblemsError(problems)
    return out


def parse_constraints(rows: Sequence[Mapping], file: str, source: str = "user") -> list[Constraint]:
    """Knowledge-constraint pairs from table rows."""
    out, problems = [], []
    for i, row in enumerate(rows):
        kid = _get(row, "k.id")
        kid = str(kid) if kid is not None else f"K{i + 1:04d}"
        prompt, answer = _get(row, "k.prompt"), _get(row, "k.answer")
        for name, v in (("prompt", prompt), ("answer", answer)):
            if not isinstance(v, str) or not v.strip():
                problems.append(Problem(file, i, kid, name, "missing or empty"))
        if isinstance(prompt, str) and isinstance(answer, str) and prompt.strip() and answer.strip():
            out.append(Constraint(kid, prompt.strip(), answer.strip(), source))
    if problems:
        raise ProblemsError(problems)
    return out


def read_mapping(path: str | os.PathLike, key_role: str, text_role: str) -> dict[str, str]:
    """A key -> text mapping from a CSV/JSONL file (for ``--safe`` and ``--unsafe-from``)."""
    rows = read_table(path)
    out, problems = {}, []
    for i, row in enumerate(rows):
        key, text = _get(row, key_role), _get(row, text_role)
        if key is None:
            problems.append(Problem(str(path), i, None, "/".join(_ALIASES[key_role]), "missing key"))
        elif not isinstance(text, str):
            problems.append(Problem(str(path), i, key, "/".join(_ALIASES[text_role]), "missing text"))
        else:
            out[str(key)] = text
    if problems:
        raise ProblemsError(problems)
    return out
