"""The built-in benchmark shipped in ``detoxedit/data/builtin/``: its parts, fingerprint and prebuilt splits.

The parts (``questions.jsonl``, ``attacks.jsonl``, ``constraints.jsonl``) are our own text, written for
this project (Apache-2.0). ``builtin/prebuilt/`` ships splits built from them; its ``metadata.json``
carries :func:`builtin_fingerprint`, so a copy built from other parts is recognised as stale and not
used. Loading a built-in split (prebuilt, else cached, else built now) is
:func:`detoxedit.data.load.load_builtin_split`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources

from detoxedit.data.jsonio import read_records
from detoxedit.data.records import BUILDER_VERSION, Attack, Constraint, Question, SafeEditRecord, SourceInfo
from detoxedit.data.tables import parse_attacks, parse_constraints, parse_questions, read_table
from detoxedit.errors import DataError

log = logging.getLogger(__name__)

BUILTIN_SOURCE = SourceInfo(
    name="builtin",
    license="Apache-2.0",
    description="detoxedit's own built-in benchmark parts (questions, safe responses, attack "
                "templates, knowledge constraints), all written for this project",
    package="detoxedit",
)


def _builtin_rows(name: str) -> list[dict]:
    ref = resources.files("detoxedit.data").joinpath("builtin", name)
    if not ref.is_file():
        raise DataError("built-in benchmark file missing from the installed package "
                        "(reinstall detoxedit)", file=f"detoxedit/data/builtin/{name}")
    with resources.as_file(ref) as path:
        return read_table(path)


def builtin_questions() -> list[Question]:
    """The built-in harmful questions, each with its safe response."""
    return parse_questions(_builtin_rows("questions.jsonl"), "builtin/questions.jsonl", "builtin")


def builtin_attacks() -> list[Attack]:
    """The built-in attack templates (some marked ``unseen``)."""
    return parse_attacks(_builtin_rows("attacks.jsonl"), "builtin/attacks.jsonl", "builtin")


def builtin_constraints() -> list[Constraint]:
    """The built-in knowledge-constraint pairs."""
    return parse_constraints(_builtin_rows("constraints.jsonl"), "builtin/constraints.jsonl", "builtin")


def builtin_fingerprint() -> str:
    """A hash of the shipped built-in parts: a cached built copy is reused only while it matches."""
    h = hashlib.sha256()
    for name in ("questions.jsonl", "attacks.jsonl", "constraints.jsonl"):
        ref = resources.files("detoxedit.data").joinpath("builtin", name)
        h.update(name.encode())
        h.update(ref.read_bytes() if ref.is_file() else b"")
    h.update(str(BUILDER_VERSION).encode())
    return h.hexdigest()[:16]


def prebuilt_split(split: str) -> list[SafeEditRecord] | None:
    """The shipped prebuilt copy of ``split`` (``builtin/prebuilt/``), or None when the package has
    none, or has one built from other built-in parts than the current ones (then with a warning)."""
    prebuilt = resources.files("detoxedit.data").joinpath("builtin", "prebuilt")
    ref, meta_ref = prebuilt.joinpath(f"SafeEdit_{split}.json"), prebuilt.joinpath("metadata.json")
    if not ref.is_file():
        return None
    stamp = json.loads(meta_ref.read_text(encoding="utf-8")).get("builtin_fingerprint") \
        if meta_ref.is_file() else None
    if stamp == builtin_fingerprint():
        with resources.as_file(ref) as path:
            return read_records(path)
    log.warning("the shipped prebuilt %s split was built from other built-in parts "
                "(fingerprint %s, now %s); rebuilding it", split, stamp, builtin_fingerprint())
    return None
