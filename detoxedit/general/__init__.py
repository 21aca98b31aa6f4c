"""General ability after editing: KQA, CSum and over-refusal (see ``docs/general.md``).

Detoxification is only worth it if the model stays useful. Three tasks measure that, each in its own
module with the same small API, and each runs offline on a built-in set written for this project:

=================  ============================================  ===============================
module             what it measures                               headline number (percent)
=================  ============================================  ===============================
``kqa``            knowledge QA, TriviaQA-style (aliases,         ``contains`` (also ``em``)
                   TriviaQA normalisation)
``csum``           one-sentence summarisation, XSum-style         ``rouge1`` (ROUGE-1 F1)
``overrefusal``    refusals of harmless requests; similarity     ``refusal_rate`` (lower is
                   of edited to vanilla answers                    better); ``locality`` ``rougeL``
=================  ============================================  ===============================

Each module registers one :class:`Task` in :data:`TASKS` (discovered on first lookup), so a new task is
one new module. The API of each module::

    items = kqa.load("builtin" | "hub" | "path.jsonl", limit=None)
    texts = kqa.prompts(items)          # what to feed the model (vanilla and edited alike)
    result = kqa.score(items, responses)  # {"n", <scores>, "ci": {...}, "per_item": [...]}
    kqa.MAX_NEW_TOKENS                  # the generation budget the scores assume

plus ``overrefusal.locality(vanilla_responses, edited_responses)``. Nothing is imported at package
import time beyond the standard library and the registry; ``datasets`` and ``rouge_score`` load only
when used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from detoxedit.registry import Registry

TASKS = Registry("general task", "detoxedit.general", skip=("evaluate", "edits"))
"""Task key -> :class:`Task` (``--tasks kqa,csum,overrefusal``)."""


@dataclass(frozen=True)
class Task:
    """A general-ability task: how to load its items, prompt the model, and score the answers."""

    key: str
    label: str
    """Its column name in tables (``KQA``)."""
    headline: str
    """The number of ``score``'s result that tables show (a percentage)."""
    max_new_tokens: int
    load: Callable
    prompts: Callable
    score: Callable
    order: int = 100
    """Place in tables and in the default task list."""


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` (called once, at the end of the task's module)."""
    return TASKS.register(task.key)(task)


def task_keys() -> list[str]:
    """Every task's key, in table order (``kqa``, ``csum``, ``overrefusal``)."""
    return sorted(TASKS.names(), key=lambda k: (TASKS[k].order, k))


LOCALITY_HEADLINE = "rougeL"
"""Over-refusal's companion number: ROUGE-L of edited vs vanilla answers to the harmless prompts."""
