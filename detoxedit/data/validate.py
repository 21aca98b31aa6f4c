"""Validation of SafeEdit records and files: every problem, each naming file, record and field.

Validation never stops at the first problem: :func:`validate_records` returns every
:class:`~detoxedit.data.records.Problem`, each naming the file, the record (index and id) and the
field, so a user fixes a file in one pass; :func:`check_records` raises them all at once as a
:class:`~detoxedit.data.records.ProblemsError` (a :class:`~detoxedit.errors.DataError`). Two quirks of
the official release are accepted, not reported: the inconsistent capitalisation of categories
(``Pornography``, ``Political Sensitivity``) and the empty response, knowledge-constraint and
generalization fields of ``SafeEdit_test_ALL.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Sequence

from detoxedit.data.jsonio import read_file
from detoxedit.data.records import (
    CATEGORIES,
    PLACEHOLDER,
    GeneralizationTest,
    KnowledgeConstraint,
    Problem,
    ProblemsError,
    SafeEditRecord,
    Severity,
    field_key,
    normalize_category,
)
from detoxedit.errors import DataError

Profile = Literal["auto", "full", "test_all"]


def detect_profile(path: str | os.PathLike | None, records: Sequence[SafeEditRecord]) -> Profile:
    """``test_all`` for the question-only/empty-field release file, ``full`` for train/val/test.

    By name (``*test_ALL*``) or by content: every record's safe and unsafe generations are empty.
    """
    if path is not None and "test_all" in Path(path).name.lower():
        return "test_all"
    if records and all(not (r.safe_generation or "") and not (r.unsafe_generation or "")
                       for r in records):
        return "test_all"
    return "full"


def _gkey(attr: str) -> str:
    return "generalization test." + field_key(attr, GeneralizationTest)


def validate_records(records: Sequence[SafeEditRecord], file: str | os.PathLike | None = None,
                     profile: Profile = "auto") -> list[Problem]:
    """Every problem in ``records`` (empty list: valid).

    ``profile`` ``full`` (train/val/test) requires responses, a knowledge constraint and the four
    generalization inputs; ``test_all`` accepts them empty, as released. ``auto`` picks by file name
    or content (:func:`detect_profile`).
    """
    fname = str(file) if file is not None else None
    if profile == "auto":
        profile = detect_profile(file, records)
    problems: list[Problem] = []
    seen_ids: dict[Any, int] = {}

    for i, rec in enumerate(records):
        rid = rec.id

        def add(fld: str | None, msg: str, sev: Severity = "error") -> None:
            problems.append(Problem(fname, i, rid, fld, msg, sev))

        # presence and types of the top-level string fields
        for attr, key in SafeEditRecord.KEYS:
            value = getattr(rec, attr)
            present = rec.key_order is None or key in rec.key_order
            if not present:
                add(key, "missing field")
                continue
            if attr == "id":
                if not isinstance(value, (int, str)) or isinstance(value, bool):
                    add(key, f"id must be an integer or a string, found {type(value).__name__}")
                elif value in seen_ids:
                    add(key, f"duplicate id (first used by record {seen_ids[value]})")
                else:
                    seen_ids[value] = i
            elif attr in ("generalization_test", "knowledge_constrain"):
                continue
            elif not isinstance(value, str):
                add(key, f"expected a string, found {type(value).__name__}")

        if isinstance(rec.category, str):
            canon = normalize_category(rec.category)
            if canon is None:
                add("unsafety category",
                    f"unknown category {rec.category!r}; expected one of {', '.join(CATEGORIES)}")
            elif rec.category not in (canon, canon.lower()):
                add("unsafety category", f"non-standard spelling {rec.category!r} (read as {canon!r})",
                    "warning")

        q = rec.question if isinstance(rec.question, str) else ""
        adv = rec.adversarial_prompt if isinstance(rec.adversarial_prompt, str) else ""
        if isinstance(rec.question, str) and not q.strip():
            add("question", "empty")
        if isinstance(rec.adversarial_prompt, str):
            if not adv.strip():
                add("adversarial prompt", "empty")
            elif PLACEHOLDER in adv:
                add("adversarial prompt", f"attack placeholder {PLACEHOLDER} was never filled")
            elif q.strip() and q.strip() not in adv:
                add("adversarial prompt", "does not contain the question", "warning")

        if profile == "full":
            for attr in ("safe_generation", "unsafe_generation"):
                v = getattr(rec, attr)
                if isinstance(v, str) and not v.strip():
                    add(field_key(attr), "empty (required in train/val/test files)")

        # nested: generalization test
        gt = rec.generalization_test
        gkey = "generalization test"
        if rec.key_order is not None and gkey not in rec.key_order:
            pass  # reported above as missing
        elif not isinstance(gt, GeneralizationTest):
            add(gkey, f"expected an object, found {type(gt).__name__}")
        else:
            for attr, key in GeneralizationTest.KEYS:
                v = getattr(gt, attr)
                if gt.key_order is not None and key not in gt.key_order:
                    add(_gkey(attr), "missing field")
                elif not isinstance(v, str):
                    add(_gkey(attr), f"expected a string, found {type(v).__name__}")
                elif attr in GeneralizationTest.INPUTS:
                    if PLACEHOLDER in v:
                        add(_gkey(attr), f"attack placeholder {PLACEHOLDER} was never filled")
                    if profile == "full" and not v.strip():
                        add(_gkey(attr), "empty (required in train/val/test files)")
            if (profile == "full" and isinstance(gt.only_harmful_question, str)
                    and gt.only_harmful_question.strip() and q.strip()
                    and gt.only_harmful_question.strip() != q.strip()):
                add(_gkey("only_harmful_question"), "differs from the record's question", "warning")

        # nested: knowledge constraint
        kc = rec.knowledge_constrain
        kkey = "knowledge constrain"
        if rec.key_order is not None and kkey not in rec.key_order:
            pass
        elif not isinstance(kc, KnowledgeConstraint):
            add(kkey, f"expected an object, found {type(kc).__name__}")
        else:
            for attr, key in KnowledgeConstraint.KEYS:
                v = getattr(kc, attr)
                fk = f"{kkey}.{key}"
                if kc.key_order is not None and key not in kc.key_order:
                    add(fk, "missing field")
                elif not isinstance(v, str):
                    add(fk, f"expected a string, found {type(v).__name__}")
                elif profile == "full" and not v.strip():
                    add(fk, "empty (required in train/val/test files)")
    return problems


def validate_file(path: str | os.PathLike, profile: Profile = "auto") -> list[Problem]:
    """Every problem in a file, including those that stop it being read (as one problem)."""
    try:
        f = read_file(path)
    except ProblemsError as err:
        return err.problems
    except DataError as err:
        return [Problem(err.file, err.index, err.record_id, err.field,
                        str(err).split(": ", 1)[-1] if err.file else str(err))]
    return validate_records(f.records, path, profile)


def check_records(records: Sequence[SafeEditRecord], file: str | os.PathLike | None = None,
                  profile: Profile = "auto") -> None:
    """Raise :class:`ProblemsError` listing every error (warnings are ignored)."""
    errors = [p for p in validate_records(records, file, profile) if p.severity == "error"]
    if errors:
        raise ProblemsError(errors)
