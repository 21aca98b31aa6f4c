"""Safety judges: label responses 0 safe, 1 unsafe, 0.5 empty.

``get_judge(spec)`` builds one from a spec string (``default``, ``refusal``, ``classifier:<id or dir>``,
``llm:<model or URL>``); see :mod:`detoxedit.judges.base`. Nothing heavy is imported until a judge runs.
"""

from detoxedit.judges.base import (EMPTY_SCORE, JUDGES, Judge, available_judges, get_judge, is_empty,
                                   parse_spec, register_judge, score_nonempty)

DEFAULT_JUDGE = "default"
"""The judge used when ``--judge`` is omitted."""

__all__ = ["DEFAULT_JUDGE", "EMPTY_SCORE", "JUDGES", "Judge", "available_judges", "get_judge", "is_empty",
           "parse_spec", "register_judge", "score_nonempty"]
