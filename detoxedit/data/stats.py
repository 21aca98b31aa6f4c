"""Counts and token lengths of SafeEdit files, to check a built or downloaded set at a glance.

Counts are per split (one file each), per category (official spelling, whatever capitalisation the
file used) and per attack family (``attack category``; test_ALL leaves it empty, so records without
a family are grouped by ``attack name`` under "(no family)"). Token lengths use a tokenizer the user
names: ``default`` (the embedded model's), or any Hugging Face tokenizer directory or hub id.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from detoxedit.data.jsonio import read_records
from detoxedit.data.records import CATEGORIES, GeneralizationTest, SafeEditRecord

#: Text fields whose token lengths are reported (label, getter returning the texts of a record).
LENGTH_FIELDS: tuple[tuple[str, Callable[[SafeEditRecord], list[str]]], ...] = (
    ("question", lambda r: [r.question or ""]),
    ("adversarial prompt", lambda r: [r.adversarial_prompt or ""]),
    ("safe generation", lambda r: [r.safe_generation or ""]),
    ("unsafe generation", lambda r: [r.unsafe_generation or ""]),
    ("generalization input", lambda r: r.generalization_test.inputs()
     if isinstance(r.generalization_test, GeneralizationTest) else []),
)


@dataclass
class LengthSummary:
    """Token-length summary of one field over the non-empty values."""

    count: int
    mean: float
    p50: int
    p95: int
    max: int


@dataclass
class FileStats:
    """Everything ``detoxedit data stats`` prints for one file."""

    path: str
    split: str
    records: int
    categories: Counter = field(default_factory=Counter)
    families: Counter = field(default_factory=Counter)
    question_only: int = 0
    unique_questions: int = 0
    unique_attacks: int = 0
    lengths: dict[str, LengthSummary] = field(default_factory=dict)
    tokenizer: str | None = None


def split_of(path: str | Path) -> str:
    """The split named by a file (``SafeEdit_test.json`` -> ``test``), or the file's stem."""
    stem = Path(path).stem
    m = re.match(r"(?i)^(?:safeedit_)?(train|val|test_all|test)$", stem)
    if not m:
        return stem
    s = m.group(1)
    return "test_ALL" if s.lower() == "test_all" else s.lower()


def _summary(values: Sequence[int]) -> LengthSummary:
    vals = sorted(values)
    n = len(vals)
    if n == 0:
        return LengthSummary(0, 0.0, 0, 0, 0)
    return LengthSummary(n, sum(vals) / n, vals[(n - 1) // 2], vals[min(n - 1, int(0.95 * (n - 1) + 0.5))],
                         vals[-1])


def file_stats(path: str | Path, records: Sequence[SafeEditRecord] | None = None,
               count_tokens: Callable[[str], int] | None = None, tokenizer_name: str | None = None
               ) -> FileStats:
    """Counts for one file, and token lengths when ``count_tokens`` is given."""
    recs = list(records) if records is not None else read_records(path)
    st = FileStats(str(path), split_of(path), len(recs), tokenizer=tokenizer_name)
    for r in recs:
        st.categories[r.canonical_category or f"(unknown: {r.category!r})"] += 1
        fam = (r.attack_category or "").strip()
        if r.is_question_only:
            st.families["(question only)"] += 1
            st.question_only += 1
        elif fam:
            st.families[fam] += 1
        else:
            st.families[f"(no family) {r.attack_name or '?'}"] += 1
    st.unique_questions = len({r.question for r in recs})
    st.unique_attacks = len({(r.attack_category, r.attack_name, r.extra.get("attack id"))
                             for r in recs if not r.is_question_only})
    if count_tokens is not None:
        for label, get in LENGTH_FIELDS:
            st.lengths[label] = _summary([count_tokens(t) for r in recs for t in get(r) if t])
    return st


def token_counter(tokenizer: str) -> Callable[[str], int]:
    """A function counting tokens with the named tokenizer (``default``: the embedded model's)."""
    from detoxedit.models.load import load_tokenizer  # handles default, local dirs, .gguf, hub ids

    tok = load_tokenizer(tokenizer)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def format_stats(stats: Sequence[FileStats]) -> str:
    """A plain-text report: one block per file, then a per-category table across splits."""
    lines: list[str] = []
    for st in stats:
        lines.append(f"{st.path}  [{st.split}]  {st.records} records, {st.unique_questions} questions, "
                     f"{st.unique_attacks} attacks, {st.question_only} question-only")
        lines.append("  attack families:")
        for fam, n in sorted(st.families.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {fam:<40} {n:>6}")
        if st.lengths:
            lines.append(f"  token lengths ({st.tokenizer}):   n     mean    p50    p95    max")
            for label, s in st.lengths.items():
                lines.append(f"    {label:<24} {s.count:>6} {s.mean:>8.1f} {s.p50:>6} {s.p95:>6} {s.max:>6}")
    if stats:
        heads = [st.split for st in stats]
        lines.append("")
        lines.append(f"{'category':<24}" + "".join(f"{h:>10}" for h in heads) + f"{'total':>10}")
        cats = list(CATEGORIES) + sorted({c for st in stats for c in st.categories} - set(CATEGORIES))
        for c in cats:
            row = [st.categories.get(c, 0) for st in stats]
            lines.append(f"{c:<24}" + "".join(f"{n:>10}" for n in row) + f"{sum(row):>10}")
        tot = [st.records for st in stats]
        lines.append(f"{'total':<24}" + "".join(f"{n:>10}" for n in tot) + f"{sum(tot):>10}")
    return "\n".join(lines)


def stats_dict(st: FileStats) -> dict[str, Any]:
    """JSON-ready form of :class:`FileStats` (for ``--json``)."""
    return {
        "path": st.path, "split": st.split, "records": st.records,
        "categories": dict(st.categories), "families": dict(st.families),
        "question_only": st.question_only, "unique_questions": st.unique_questions,
        "unique_attacks": st.unique_attacks, "tokenizer": st.tokenizer,
        "lengths": {k: vars(v) for k, v in st.lengths.items()},
    }
