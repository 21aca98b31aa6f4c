"""Shared plumbing of the general-ability tasks: JSONL reading, built-in files, the hub, intervals.

Each task module (``kqa``, ``csum``, ``overrefusal``) turns rows into its own item type; this module
only gets the rows. Errors name the file and line (``path:line``), the record index and id, and the
field, through :class:`detoxedit.errors.DataError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from detoxedit.errors import DataError, DetoxEditError

Row = tuple[str, int, dict]
"""One JSONL record: (where, index, object); ``where`` is ``"path:line"``."""


def read_jsonl(path: str | os.PathLike, label: str | None = None) -> list[Row]:
    """The objects of a JSONL file with their line locations; blank lines are skipped.

    ``label`` replaces the path in messages (built-in files are named by their package path).
    Raises DataError for a missing file, invalid JSON, or a line that is not an object.
    """
    p = Path(path).expanduser()
    name = label or str(p)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("no such file (expected 'builtin', 'hub' or a JSONL file)", file=name) from None
    except IsADirectoryError:
        raise DataError("is a directory; expected a JSONL file", file=name) from None
    rows: list[Row] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON: {err.msg} (column {err.colno})", file=f"{name}:{n}") from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", file=f"{name}:{n}",
                            index=len(rows))
        rows.append((f"{name}:{n}", len(rows), obj))
    if not rows:
        raise DataError("no records", file=name)
    return rows


def builtin_rows(name: str) -> list[Row]:
    """Rows of ``detoxedit/general/builtin/<name>``, the sets shipped with the package."""
    ref = resources.files("detoxedit.general").joinpath("builtin", name)
    label = f"detoxedit/general/builtin/{name}"
    if not ref.is_file():
        raise DataError("built-in file missing from the installed package (reinstall detoxedit)", file=label)
    with resources.as_file(ref) as path:
        return read_jsonl(path, label=label)


def record_id(where: str, index: int, row: dict, keys: Sequence[str] = ("id",)) -> str:
    """The record's id from the first of ``keys`` present, else ``line-<n>`` from its location."""
    for key in keys:
        value = row.get(key)
        if value not in (None, ""):
            if not isinstance(value, (str, int)):
                raise DataError(f"id must be a string or an integer, not {type(value).__name__}",
                                file=where, index=index, field=key)
            return str(value)
    return "line-" + where.rsplit(":", 1)[-1]


def text_field(where: str, index: int, rid: str, row: dict, key: str) -> str:
    """A required non-empty string field, stripped."""
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        what = "missing" if key not in row else f"must be a non-empty string, not {value!r:.60}"
        raise DataError(what, file=where, index=index, record_id=rid, field=key)
    return value.strip()


def check_unique(rows: Sequence[Row], ids: Sequence[str]) -> None:
    """Raise DataError naming the location of the first repeated id (``ids[i]`` is ``rows[i]``'s)."""
    seen: set[str] = set()
    for (where, index, _row), rid in zip(rows, ids):
        if rid in seen:
            raise DataError("duplicate id", file=where, index=index, record_id=rid, field="id")
        seen.add(rid)


def check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DetoxEditError(f"limit must be a positive integer or None, not {limit!r}")


# --------------------------------------------------------------------------------------------------
# The hub (through the ``datasets`` library)
# --------------------------------------------------------------------------------------------------
def hub_offline() -> bool:
    """True when the user asked for offline mode (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_hub(path: str, config: str | None, split: str, *, task: str, local_hint: str) -> Any:
    """``datasets.load_dataset(path, config, split=split)``, with errors a user can act on.

    ``task`` names the task in messages (``kqa``); ``local_hint`` says what a local JSONL file must
    hold. Raises DetoxEditError when ``datasets`` is not installed, and when the dataset cannot be
    loaded (offline and not cached, unreachable hub, unknown id).
    """
    what = f"{path}" + (f" ({config})" if config else "") + f", split {split}"
    alternatives = (f"or use the offline built-in set ('builtin'), or a local JSONL file ({local_hint})")
    try:
        import datasets  # heavy; only when the hub is asked for
    except ImportError:
        raise DetoxEditError(
            f"{task}: loading {what} from the hub needs the 'datasets' package, which is not installed. "
            f"Install it with:  pip install datasets  -- {alternatives}") from None
    try:
        return datasets.load_dataset(path, config, split=split)
    except Exception as err:  # datasets/hub raise many types across versions
        if hub_offline():
            reason = ("offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and the dataset is not in "
                      "the local cache. Run once online (unset HF_HUB_OFFLINE) to cache it")
        else:
            reason = f"it could not be loaded ({type(err).__name__}: {str(err)[:300]})"
        raise DetoxEditError(f"{task}: cannot load {what} from the hub: {reason}; {alternatives}") from err


# --------------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------------
def mean_ci(values: Sequence[float], n_resamples: int = 1000, alpha: float = 0.05,
            seed: int = 0) -> list[float]:
    """``[low, high]`` percentile bootstrap interval of the mean (``metrics.safety.bootstrap_ci``)."""
    from detoxedit.metrics.safety import bootstrap_ci

    lo, hi = bootstrap_ci([float(v) for v in values], n_resamples=n_resamples, alpha=alpha, seed=seed)
    return [lo, hi]
