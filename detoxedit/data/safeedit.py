"""SafeEdit records: the record type, reading and writing official files, and validation.

The official SafeEdit files (Wang et al., ACL 2024; hub id ``zjunlp/SafeEdit``) are JSON lists of
objects whose keys contain spaces (``"unsafety category"``, ``"adversarial prompt"``...). We read
them into :class:`SafeEditRecord` values and write them back *unchanged*: every key survives, in its
original order, unknown keys included, and the file is re-serialised with the indentation and
``ensure_ascii`` convention sniffed from the input, so ``SafeEdit_test_ALL.json`` round-trips byte for
byte. That matters because users diff our outputs against the official release.

Validation never stops at the first problem: :func:`validate_records` returns every
:class:`Problem`, each naming the file, the record (index and id) and the field, so a user fixes a
file in one pass. Two quirks of the official release are accepted, not reported: the inconsistent
capitalisation of categories (``Pornography``, ``Political Sensitivity``) and the empty response,
knowledge-constraint and generalization fields of ``SafeEdit_test_ALL.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal, Sequence

from detoxedit.errors import DataError, DetoxEditError

# --------------------------------------------------------------------------------------------
# Constants

#: The nine unsafe categories, spelled as in the official files (capitalisation is theirs).
CATEGORIES: tuple[str, ...] = (
    "offensiveness",
    "unfairness and bias",
    "physical harm",
    "mental harm",
    "illegal activities",
    "ethics and morality",
    "privacy and property",
    "Pornography",
    "Political Sensitivity",
)

#: The placeholder in attack templates that the harmful question replaces.
PLACEHOLDER = "[INSERT HARMFUL QUESTION HERE]"

#: Split names; ``test_ALL`` is the extra 540-record file with empty response fields.
SPLITS: tuple[str, ...] = ("train", "val", "test", "test_ALL")

#: The official hub id (gated, CC BY-NC-SA 4.0).
HUB_ID = "zjunlp/SafeEdit"

_CATEGORY_KEY = {re.sub(r"[\s_\-]+", " ", c.lower()).strip(): c for c in CATEGORIES}
_CATEGORY_ALIASES = {
    "unfairness & bias": "unfairness and bias",
    "ethics & morality": "ethics and morality",
    "privacy & property": "privacy and property",
}


def normalize_category(name: str) -> str | None:
    """The official spelling of ``name`` in any capitalisation, or None if it is no SafeEdit category.

    Spaces, underscores and hyphens are interchangeable and ``&`` means ``and``, so
    ``"POLITICAL_SENSITIVITY"``, ``"political sensitivity"`` and ``"Political Sensitivity"`` all map to
    ``"Political Sensitivity"``. Outputs always use the official spelling so that they look like the
    official files to other tools.
    """
    if not isinstance(name, str):
        return None
    key = re.sub(r"[\s_\-]+", " ", name.lower()).strip()
    key = _CATEGORY_ALIASES.get(key, key).replace("&", "and")
    key = re.sub(r"\s+", " ", key)
    return _CATEGORY_KEY.get(key)


def fill_template(template: str, question: str) -> str:
    """An attack template with its placeholder replaced by the harmful question."""
    if PLACEHOLDER not in template:
        raise ValueError(f"attack template has no {PLACEHOLDER} placeholder")
    return template.replace(PLACEHOLDER, question)


# --------------------------------------------------------------------------------------------
# Record types
#
# Each type maps python attribute names to the official JSON keys. ``None`` in an attribute means
# "the key was absent": it is not written back, and validation reports it. Values are stored as
# read (a wrong type is reported by validation, never silently converted) so that writing a file we
# read reproduces it.

_ABSENT = None


class _Mapped:
    """Shared from/to-dict logic: known keys to attributes, unknown keys to ``extra``, order kept."""

    KEYS: ClassVar[tuple[tuple[str, str], ...]] = ()  # (attribute, json key), in official order
    extra: dict
    key_order: tuple[str, ...] | None

    @classmethod
    def _nested(cls) -> dict[str, type]:
        return {}

    @classmethod
    def from_dict(cls, data: dict):
        """Build from a parsed JSON object, keeping unknown keys and the key order."""
        nested = cls._nested()
        kwargs: dict[str, Any] = {}
        known = set()
        for attr, key in cls.KEYS:
            known.add(key)
            if key in data:
                value = data[key]
                if attr in nested and isinstance(value, dict):
                    value = nested[attr].from_dict(value)
                kwargs[attr] = value
            else:
                kwargs[attr] = _ABSENT
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs, extra=extra, key_order=tuple(data.keys()))

    def to_dict(self) -> dict:
        """The JSON object: original key order for read records, official order for new ones."""
        values: dict[str, Any] = {}
        for attr, key in self.KEYS:
            value = getattr(self, attr)
            if value is _ABSENT and (self.key_order is None or key not in self.key_order):
                continue
            values[key] = value.to_dict() if isinstance(value, _Mapped) else value
        values.update(self.extra)
        order = list(self.key_order or ())
        out = {k: values[k] for k in order if k in values}
        out.update({k: v for k, v in values.items() if k not in out})
        return out


@dataclass
class KnowledgeConstraint(_Mapped):
    """A general-knowledge instruction/answer pair (AlpacaEval-style), used only in DINM's loss."""

    KEYS: ClassVar = (("prompt", "prompt"), ("answer", "answer"))
    prompt: str | None = ""
    answer: str | None = ""
    extra: dict = field(default_factory=dict)
    key_order: tuple[str, ...] | None = field(default=None, compare=False, repr=False)


@dataclass
class GeneralizationTest(_Mapped):
    """The four out-of-distribution inputs of a case, and which other attack two of them use.

    ``attack_category``/``attack_name`` describe the *other* attack used by ``other_attack`` and
    ``other_question_and_attack``; the official key order puts them between the inputs.
    """

    KEYS: ClassVar = (
        ("only_harmful_question", "test input of only harmful question"),
        ("other_attack", "test input of other attack prompt input"),
        ("attack_category", "attack_category"),
        ("attack_name", "attack_name"),
        ("other_question", "test input of other question input"),
        ("other_question_and_attack", "test input of other questions and attack prompts"),
    )
    only_harmful_question: str | None = ""
    other_attack: str | None = ""
    attack_category: str | None = ""
    attack_name: str | None = ""
    other_question: str | None = ""
    other_question_and_attack: str | None = ""
    extra: dict = field(default_factory=dict)
    key_order: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    #: The four inputs in the order of the paper's metrics DG_onlyQ, DG_otherA, DG_otherQ, DG_otherAQ.
    INPUTS: ClassVar = ("only_harmful_question", "other_attack", "other_question",
                        "other_question_and_attack")

    def inputs(self) -> list[str]:
        """The four generalization inputs, in metric order (onlyQ, otherA, otherQ, otherAQ)."""
        return [getattr(self, a) or "" for a in self.INPUTS]


@dataclass
class SafeEditRecord(_Mapped):
    """One SafeEdit case: a harmful question inside an attack prompt, with safe/unsafe responses.

    Attribute names are the official keys in snake case (``category`` is ``"unsafety category"``,
    ``knowledge_constrain`` keeps the official spelling). ``extra`` holds keys we do not know;
    ``key_order`` the order they were read in, so a record writes back as it was read.
    """

    KEYS: ClassVar = (
        ("id", "id"),
        ("category", "unsafety category"),
        ("adversarial_prompt", "adversarial prompt"),
        ("question", "question"),
        ("attack_category", "attack category"),
        ("attack_name", "attack name"),
        ("unsafe_generation", "unsafe generation"),
        ("safe_generation", "safe generation"),
        ("generalization_test", "generalization test"),
        ("knowledge_constrain", "knowledge constrain"),
    )
    id: int | str | None = None
    category: str | None = ""
    adversarial_prompt: str | None = ""
    question: str | None = ""
    attack_category: str | None = ""
    attack_name: str | None = ""
    unsafe_generation: str | None = ""
    safe_generation: str | None = ""
    generalization_test: GeneralizationTest | Any = field(default_factory=GeneralizationTest)
    knowledge_constrain: KnowledgeConstraint | Any = field(default_factory=KnowledgeConstraint)
    extra: dict = field(default_factory=dict)
    key_order: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def _nested(cls) -> dict[str, type]:
        return {"generalization_test": GeneralizationTest, "knowledge_constrain": KnowledgeConstraint}

    @property
    def canonical_category(self) -> str | None:
        """The official spelling of this record's category (None if unknown)."""
        return normalize_category(self.category) if isinstance(self.category, str) else None

    @property
    def is_question_only(self) -> bool:
        """True for test_ALL's question-only records (no attack around the question)."""
        return (self.adversarial_prompt or "").strip() == (self.question or "").strip()


def field_key(attr: str, owner: type = SafeEditRecord) -> str:
    """The official JSON key of an attribute (for messages)."""
    return dict(owner.KEYS)[attr]


# --------------------------------------------------------------------------------------------
# File formats


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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: never a half file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        umask = os.umask(0)  # mkstemp makes 0600 files; give the usual permissions instead
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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


# --------------------------------------------------------------------------------------------
# Validation

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One problem in a data file: where (file, record index and id, field) and what."""

    file: str | None
    index: int | None
    record_id: Any
    field: str | None
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.index is not None:
            where.append(f"record {self.index}"
                         + (f" (id {self.record_id!r})" if self.record_id is not None else ""))
        if self.field is not None:
            where.append(f"field {self.field!r}")
        head = ", ".join(where)
        text = f"{head}: {self.message}" if head else self.message
        return f"{self.severity}: {text}"

    def to_error(self) -> DataError:
        return DataError(self.message, file=self.file, index=self.index, record_id=self.record_id,
                         field=self.field)


class ProblemsError(DataError):
    """Several problems at once (the raising form of a validation); ``problems`` lists them all."""

    def __init__(self, problems: Sequence[Problem], limit: int = 20):
        self.problems = list(problems)
        first = self.problems[0] if self.problems else None
        lines = [str(p) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more")
        Exception.__init__(self, f"{len(self.problems)} problem(s):\n  " + "\n  ".join(lines))
        self.file = first.file if first else None
        self.index = first.index if first else None
        self.record_id = first.record_id if first else None
        self.field = first.field if first else None


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


# --------------------------------------------------------------------------------------------
# Loading a split from a file, a directory, the built-in benchmark or the hub


def canonical_split(split: str) -> str:
    """``train``/``val``/``test``/``test_ALL`` from any capitalisation (``validation`` = ``val``)."""
    s = split.strip()
    low = s.lower().replace("-", "_")
    if low in ("validation", "dev"):
        low = "val"
    for name in SPLITS:
        if low == name.lower():
            return name
    raise DetoxEditError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def split_file_candidates(directory: Path, split: str) -> list[Path]:
    """The file names we look for in a directory, official first."""
    names = [f"SafeEdit_{split}.json", f"SafeEdit_{split}.jsonl", f"{split}.json", f"{split}.jsonl"]
    return [directory / n for n in names]


def split_source(data: str | os.PathLike, split: str) -> str:
    """The name of the file a split is read from, for messages: the file itself, the split's file in a
    directory, or ``data`` as given (``builtin``, a hub id)."""
    p = Path(str(data)).expanduser()
    if p.is_dir():
        for cand in split_file_candidates(p, canonical_split(split)):
            if cand.is_file():
                return str(cand)
    return str(data)


def _looks_like_hub_id(data: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", data)) and not Path(data).exists()


def load_split(data: str | os.PathLike, split: str = "test") -> list[SafeEditRecord]:
    """The records of one split from wherever the user keeps the data.

    ``data`` is a file (read as is; ``split`` is then only a label), a directory holding
    ``SafeEdit_{split}.json``, the word ``builtin`` (our shipped benchmark, see
    :mod:`detoxedit.data.build`), or a hub dataset id such as ``zjunlp/SafeEdit`` (downloaded with
    ``huggingface_hub`` when online, read from its cache when offline).
    """
    split = canonical_split(split)
    text = str(data)
    if text == "builtin":
        from detoxedit.data.build import load_builtin_split

        return load_builtin_split(split)
    p = Path(text).expanduser()
    if p.is_file():
        return read_records(p)
    if p.is_dir():
        for cand in split_file_candidates(p, split):
            if cand.is_file():
                return read_records(cand)
        raise DataError(f"no {split} split here; looked for "
                        + ", ".join(c.name for c in split_file_candidates(p, split)), file=str(p))
    if _looks_like_hub_id(text):
        return read_records(hub_split_path(text, split))
    raise DataError("no such file or directory (and not a hub id like zjunlp/SafeEdit, nor 'builtin')",
                    file=text)


def hub_split_path(repo_id: str, split: str) -> Path:
    """Local path of ``SafeEdit_{split}.json`` from a hub dataset repo, downloading when online.

    Offline (``HF_HUB_OFFLINE=1`` or no network) only the local cache is used; a miss raises a
    :class:`DataError` that says exactly what to do instead.
    """
    split = canonical_split(split)
    filename = f"SafeEdit_{split}.json"
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise DataError("reading from the hub needs huggingface_hub: pip install huggingface_hub",
                        file=f"{repo_id}/{filename}") from None
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset"))
    except Exception as err:  # the hub raises many types; classify by name to stay version-proof
        if type(err).__name__ == "EntryNotFoundError":  # online, but the file lives elsewhere
            found = _find_in_repo(repo_id, split)
            if found is not None:
                return Path(hf_hub_download(repo_id=repo_id, filename=found, repo_type="dataset"))
        raise DataError(_hub_error_message(repo_id, split, err), file=f"{repo_id}/{filename}") from None


def _find_in_repo(repo_id: str, split: str) -> str | None:
    """A file named ``SafeEdit_{split}.json(l)`` anywhere in the dataset repo (None if none)."""
    try:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(repo_id, repo_type="dataset")
    except Exception:
        return None
    wanted = {f"safeedit_{split}.json".lower(), f"safeedit_{split}.jsonl".lower()}
    return next((f for f in sorted(files) if f.rsplit("/", 1)[-1].lower() in wanted), None)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_error_message(repo_id: str, split: str, err: Exception) -> str:
    name = type(err).__name__
    what_else = (f"download SafeEdit_{split}.json yourself and pass --data DIR (the folder holding it), "
                 f"or use the offline built-in benchmark with --data builtin")
    if "Gated" in name or "401" in str(err) or "403" in str(err):
        return (f"{repo_id} is gated: accept its terms (CC BY-NC-SA 4.0) at "
                f"https://huggingface.co/datasets/{repo_id}, then log in with `hf auth login` "
                f"(or set HF_TOKEN) and retry; or {what_else}")
    if "RepositoryNotFound" in name:
        return f"no dataset {repo_id} on the hub (or it is private and you are not logged in); {what_else}"
    if "EntryNotFound" in name and "Local" not in name:
        return f"{repo_id} has no file SafeEdit_{split}.json; {what_else}"
    if _hub_offline() or "LocalEntryNotFound" in name or "Offline" in name or "Connect" in name:
        reason = ("HF_HUB_OFFLINE=1 is set" if _hub_offline() else "the hub cannot be reached")
        return (f"cannot load split {split} of {repo_id}: {reason} and the file is not in the local "
                f"Hugging Face cache. Run once online (unset HF_HUB_OFFLINE; log in with `hf auth login` "
                f"after accepting the dataset terms) to cache it, or {what_else}")
    return f"could not fetch SafeEdit_{split}.json from {repo_id} ({name}: {err}); {what_else}"


def is_test_all_record(record: SafeEditRecord) -> bool:
    """True for a ``SafeEdit_test_ALL.json``-style record: no generalization inputs and no responses
    (the official file leaves them empty; each record is one evaluation input, not an edit case)."""
    gt = record.generalization_test
    no_gt = not isinstance(gt, GeneralizationTest) or not any(t.strip() for t in gt.inputs())
    return no_gt and not (record.safe_generation or "").strip() and not (record.unsafe_generation or "").strip()


def iter_inputs(record: SafeEditRecord) -> Iterable[tuple[str, str]]:
    """(metric name, input text) for the evaluation inputs of a case.

    A train/val/test record gives five: DS and the four DG. A ``SafeEdit_test_ALL``-style record
    (:func:`is_test_all_record`) gives one, as the paper evaluates that file: a question-only record
    (``adversarial prompt`` == ``question``; the official file also names its attack ``"None"``)
    is ``DG_onlyQ``, an adversarial record (a question inside an attack unseen in training) is
    ``DG_otherAQ``; DS and the other DG metrics are then missing, not zero.
    """
    if is_test_all_record(record):
        if record.is_question_only or (record.attack_name or "").strip() == "None":
            yield "DG_onlyQ", record.question or record.adversarial_prompt or ""
        else:
            yield "DG_otherAQ", record.adversarial_prompt or ""
        return
    yield "DS", record.adversarial_prompt or ""
    gt = record.generalization_test
    if isinstance(gt, GeneralizationTest):
        for name, text in zip(("DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"), gt.inputs()):
            yield name, text
