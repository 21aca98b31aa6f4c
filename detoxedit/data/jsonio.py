"""Reading and writing official SafeEdit JSON (and JSONL) files without losing anything.

Records are read into :class:`~detoxedit.data.records.SafeEditRecord` values and written back
*unchanged*: every key survives, in its original order, unknown keys included, and the file is
re-serialised with the indentation and ``ensure_ascii`` convention sniffed from the input, so
``SafeEdit_test_ALL.json`` round-trips byte for byte. That matters because users diff our outputs
against the official release. New files are written in the official style; every write is atomic
(:func:`detoxedit.io.atomic_write_text`).

Where a split's file is found (a directory, the built-in benchmark, the hub) is
:mod:`detoxedit.data.load`'s job; checking the records is :mod:`detoxedit.data.validate`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from detoxedit.data.records import Problem, ProblemsError, SafeEditRecord
from detoxedit.errors import DataError
from detoxedit.io import atomic_write_text

@dataclass(frozen=True)
class JsonStyle:
    """How a file was serialised, so that writing it back reproduces it.

    ``exact`` says whether re-serialising the parsed content with this style reproduced the input
    bytes (then a round trip is byte-identical; otherwise it is JSON-equal).
    """

    kind: Literal["json", "jsonl"] = "json"
    indent: int | None = 4
    ensure_ascii: bool = True
    compact: bool = False
    trailing_newline: bool = False
    exact: bool = False

    def dumps_obj(self, obj: Any) -> str:
        seps = (",", ":") if self.compact else ((",", ": ") if self.indent is not None else None)
        return json.dumps(obj, indent=self.indent if self.kind == "json" else None,
                          ensure_ascii=self.ensure_ascii, separators=seps)


#: Style of new official-format files: the official release's own (4-space indent, ASCII escapes).
OFFICIAL_STYLE = JsonStyle()


@dataclass
class SafeEditFile:
    """Records read from one file, with the style to write them back in."""

    path: Path
    records: list[SafeEditRecord]
    style: JsonStyle


def _sniff_json_style(text: str, data: Any) -> JsonStyle:
    trailing = text.endswith("\n")
    body = text[:-1] if trailing else text
    m = re.search(r"\n([ \t]+)\S", body)
    sniffed = len(m.group(1)) if m and "\t" not in m.group(1) else None
    candidates: list[JsonStyle] = []
    indents = [sniffed] if sniffed is not None else []
    indents += [i for i in (4, 2, None) if i not in indents]
    for indent in indents:
        for ea in ((True, False) if body.isascii() else (False,)):
            for compact in ((False, True) if indent is None else (False,)):
                candidates.append(JsonStyle("json", indent, ea, compact, trailing))
    for style in candidates:
        if style.dumps_obj(data) == body:
            return dataclasses.replace(style, exact=True)
    return JsonStyle("json", sniffed, body.isascii() and "\\u" in body, False, trailing, False)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("no such file", file=str(path)) from None
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err})", file=str(path)) from None


def _parse(path: Path, text: str) -> tuple[list[Any], JsonStyle]:
    """Parsed objects and the file's style; JSONL if the name says so or the text is not one JSON."""
    is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    if not is_jsonl:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if text.lstrip().startswith("{"):
                is_jsonl = True  # several objects on separate lines
            else:
                raise DataError(f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}",
                                file=str(path)) from None
        else:
            if isinstance(data, dict):
                data = [data]
            if not isinstance(data, list):
                raise DataError(f"expected a JSON list of records, found {type(data).__name__}",
                                file=str(path))
            return data, _sniff_json_style(text, data)
    rows: list[Any] = []
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON on line {n} column {err.colno}: {err.msg}",
                            file=str(path)) from None
    ea = text.isascii()
    style = JsonStyle("jsonl", None, ea, False, text.endswith("\n"))
    exact = "\n".join(style.dumps_obj(r) for r in rows) + ("\n" if style.trailing_newline else "")
    return rows, dataclasses.replace(style, exact=exact == text)


def read_file(path: str | os.PathLike) -> SafeEditFile:
    """Read an official-format JSON list or JSONL file, keeping every field and the file's style.

    Raises :class:`DataError` only for problems that stop reading (missing file, broken JSON, an
    entry that is not an object); field-level problems are left to :func:`validate_records`.
    """
    p = Path(path)
    rows, style = _parse(p, _read_text(p))
    records = []
    bad = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            bad.append(Problem(str(p), i, None, None, f"expected an object, found {type(row).__name__}"))
            continue
        records.append(SafeEditRecord.from_dict(row))
    if bad:
        raise ProblemsError(bad)
    return SafeEditFile(p, records, style)


def read_records(path: str | os.PathLike) -> list[SafeEditRecord]:
    """The records of an official-format JSON or JSONL file."""
    return read_file(path).records


def dumps_records(records: Sequence[SafeEditRecord], style: JsonStyle = OFFICIAL_STYLE) -> str:
    """Serialised records in ``style`` (official JSON by default)."""
    objs = [r.to_dict() if isinstance(r, SafeEditRecord) else r for r in records]
    if style.kind == "jsonl":
        text = "\n".join(style.dumps_obj(o) for o in objs)
        return text + ("\n" if style.trailing_newline or objs else "")
    return style.dumps_obj(objs) + ("\n" if style.trailing_newline else "")


def write_records(path: str | os.PathLike, records: Sequence[SafeEditRecord],
                  style: JsonStyle | None = None) -> Path:
    """Write records atomically; JSONL when the name ends in ``.jsonl``, else official JSON.

    Pass the ``style`` of a file you read to reproduce its formatting.
    """
    p = Path(path)
    if style is None:
        style = (JsonStyle("jsonl", None, False, False, True)
                 if p.suffix.lower() in (".jsonl", ".ndjson") else OFFICIAL_STYLE)
    atomic_write_text(p, dumps_records(records, style))
    return p
