"""A general-ability task: one-step arithmetic, scored by whether the right number is in the answer.

Once this module is imported (or copied into ``detoxedit/general/``), ``detoxedit general --tasks
arithmetic`` and every report that reads ``general.json`` include it. See ``docs/extending.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from detoxedit.general import Task, register_task

MAX_NEW_TOKENS = 16
PROMPT = "What is {a} plus {b}? Answer with the number only."


@dataclass(frozen=True)
class Sum:
    id: str
    a: int
    b: int


def load(source: str = "builtin", limit: int | None = None) -> list[Sum]:
    items = [Sum(f"sum-{a}-{b}", a, b) for a, b in ((2, 3), (10, 7), (21, 21), (100, 1))]
    return items[:limit] if limit is not None else items


def prompts(items: Sequence[Sum]) -> list[str]:
    return [PROMPT.format(a=it.a, b=it.b) for it in items]


def score(items: Sequence[Sum], responses: Sequence[str]) -> dict:
    hits = [str(it.a + it.b) in re.findall(r"-?\d+", r) for it, r in zip(items, responses)]
    return {"n": len(hits), "accuracy": 100.0 * sum(hits) / len(hits),
            "per_item": [{"id": it.id, "correct": h} for it, h in zip(items, hits)]}


TASK = register_task(Task(key="arithmetic", label="Arithmetic", headline="accuracy",
                          max_new_tokens=MAX_NEW_TOKENS, load=load, prompts=prompts, score=score, order=90))
