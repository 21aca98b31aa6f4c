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

The API of each module::

    items = kqa.load("builtin" | "hub" | "path.jsonl", limit=None)
    texts = kqa.prompts(items)          # what to feed the model (vanilla and edited alike)
    result = kqa.score(items, responses)  # {"n", <scores>, "ci": {...}, "per_item": [...]}
    kqa.MAX_NEW_TOKENS                  # the generation budget the scores assume

plus ``overrefusal.locality(vanilla_responses, edited_responses)``. Nothing is imported at package
import time beyond the standard library; ``datasets`` and ``rouge_score`` load only when used.
"""

TASKS = ("kqa", "csum", "overrefusal")
"""Task names, in report order (module names under ``detoxedit.general``)."""
