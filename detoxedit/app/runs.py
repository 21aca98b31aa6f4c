"""The Runs and Compare tabs' logic: run directories, their answers, human labels, metrics, comparison.

A person's label is written exactly as ``detoxedit label`` writes it
(:func:`detoxedit.bench.human.append_label`: who, when, the judge shown and its version), so the
report, ``compare`` and ``label`` read labels set here as their own. Metrics come from the same
functions as the report (:func:`detoxedit.bench.report.human_summary` and
:func:`~detoxedit.bench.report.human_lines`), the comparison from :mod:`detoxedit.bench.compare`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from detoxedit.bench import human
from detoxedit.errors import DetoxEditError

ALL = "all"
SIDES = ("both",) + human.SIDES
FILTERS = {
    "all": "all answers",
    "judges": "the two judges disagree",
    "human": "judge and person disagree",
    "unread": "no human label yet",
}
"""Filter key -> the words the page shows."""
LABEL_NAMES = {0.0: "safe", 1.0: "unsafe", 0.5: "empty"}
ANSWER_CHARS = 200
"""Characters of an answer shown in the table (the detail view shows it whole)."""
TABLE_HEADERS = ["case", "category", "input", "side", "judge", "other judge", "person", "answer"]


def label_name(label) -> str:
    return "-" if label is None else LABEL_NAMES.get(float(label), str(label))


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def find_runs(paths: Iterable[str | Path]) -> list[str]:
    """The run directories among ``paths``: each path that is a run (it has ``config.yaml``), and the
    runs directly inside each path that is not (``--runs runs/`` lists ``runs/dinm``, ``runs/sft`` ...)."""
    out = []
    for p in paths:
        p = Path(p).expanduser()
        if is_run_dir(p):
            out.append(str(p))
        elif p.is_dir():
            out += [str(c) for c in sorted(p.iterdir()) if c.is_dir() and is_run_dir(c)]
    return list(dict.fromkeys(out))


def check_run_dir(path: str | Path | None) -> Path:
    """``path`` as a run directory, or a sentence on why it is not one."""
    text = str(path or "").strip()
    if not text:
        raise DetoxEditError("Choose or type a run directory.")
    p = Path(text).expanduser()
    if not p.exists():
        raise DetoxEditError(f"{p} does not exist.")
    if not p.is_dir():
        raise DetoxEditError(f"{p} is a file, not a run directory.")
    if not is_run_dir(p):
        raise DetoxEditError(f"{p} is not a run directory (no config.yaml; make one with `detoxedit bench --out DIR`).")
    return p


@dataclass
class RunView:
    """An open run: its settings and records (human labels are read afresh whenever they are needed)."""

    run_dir: Path
    cfg: dict
    records: list[dict]
    _other: dict = field(default_factory=dict, repr=False)

    @property
    def judges(self) -> list[str]:
        """The judges whose labels the records hold, the run's own first."""
        found = dict.fromkeys(j for r in self.records for j in (r.get("labels") or {}))
        own = self.cfg.get("judge")
        return ([own] if own in found else []) + [j for j in found if j != own]

    @property
    def judge(self) -> str:
        """The judge shown first: the run's, else the first whose labels the records hold."""
        return (self.judges or [self.cfg.get("judge") or "default"])[0]

    @property
    def categories(self) -> list[str]:
        return sorted({r.get("category") or "?" for r in self.records})

    def other_labels(self, judge: str) -> tuple[str | None, dict | None]:
        """The other offline judge (``default`` <-> ``refusal``, as the report compares them) and its
        labels ``{(case_id, side, key): label}``: stored in the records, or, for the ``refusal`` judge (a
        phrase list, no model), computed here; None when they are neither."""
        from detoxedit.bench.report import OTHER_JUDGE

        other = OTHER_JUDGE.get(judge)
        if other is None:
            return None, None
        if other not in self._other:
            self._other[other] = _labels_of(self.records, other)
        return other, self._other[other]


def _labels_of(records: list[dict], judge: str) -> dict | None:
    if all(judge in (r.get("labels") or {}) for r in records):
        return {(str(r["case_id"]), side, key): v for r in records
                for side in human.SIDES for key, v in ((r["labels"][judge] or {}).get(side) or {}).items()}
    if judge != "refusal":
        return None
    from detoxedit.judges import get_judge

    ref = get_judge("refusal")
    out = {}
    for r in records:
        prompts = r.get("judged_prompts") or {}
        for side in human.SIDES:
            answers = r.get(side) or {}
            keys = list(answers)
            got = ref.judge([(prompts.get(side) or {}).get(k, "") for k in keys], [answers[k] for k in keys])
            out.update({(str(r["case_id"]), side, k): v for k, v in zip(keys, got)})
    return out


def open_run(path: str | Path | None) -> RunView:
    """Read a run directory; a sentence on what is wrong when it is not one or has no finished case."""
    import yaml

    from detoxedit.bench.report import load_run

    p = check_run_dir(path)
    try:
        cfg, records = load_run(p)
    except yaml.YAMLError as err:
        raise DetoxEditError(f"{p / 'config.yaml'} is not valid YAML ({str(err).splitlines()[0]}).") from None
    if not isinstance(cfg, dict):
        raise DetoxEditError(f"{p / 'config.yaml'} does not hold a run config.")
    if not records:
        raise DetoxEditError(f"{p} has no finished cases yet.")
    return RunView(p, cfg, records)


def run_markdown(view: RunView) -> str:
    """One paragraph on the run: method, model, data, judges, how many answers a person labelled."""
    c = view.cfg
    labelled = len(human.read_human(view.run_dir))
    return (f"**{view.run_dir}**: method `{c.get('method')}` on `{c.get('model')}`, data `{c.get('data')}` "
            f"split `{c.get('split')}`, {len(view.records)} cases; judges with labels: "
            f"{', '.join(f'`{j}`' for j in view.judges) or 'none'}; {labelled} answers labelled by a person.")


@dataclass
class Answer:
    """One answer of the run, as the table shows it."""

    case_id: str
    category: str
    key: str
    side: str
    prompt: str
    answer: str
    judge_label: float | None
    other_label: float | None
    human_label: int | None

    @property
    def ref(self) -> str:
        """How the page names this answer (and :func:`parse_ref` reads it back)."""
        return f"{self.case_id} · {self.key} · {self.side}"

    def row(self) -> list[str]:
        text = " ".join(self.answer.split())
        short = text if len(text) <= ANSWER_CHARS else text[:ANSWER_CHARS] + "…"
        return [self.case_id, self.category, self.key, self.side, label_name(self.judge_label),
                label_name(self.other_label), label_name(self.human_label), short or "(empty)"]


def parse_ref(ref: str | None) -> tuple[str, str, str]:
    """``"case · key · side"`` -> ``(case_id, key, side)``."""
    parts = [p.strip() for p in str(ref or "").rsplit(" · ", 2)]
    if len(parts) != 3 or parts[2] not in human.SIDES:
        raise DetoxEditError("Choose an answer first (click a row of the table).")
    return parts[0], parts[1], parts[2]


def answers(view: RunView, judge: str | None = None, category: str = ALL, which: str = "all",
            side: str = "both") -> tuple[list[Answer], str]:
    """The run's answers under the filters, and a note on the filter (empty when there is none to make).

    ``which``: a key of :data:`FILTERS`: every answer; those the run's judge and the other offline
    judge label differently; those a person labelled differently from the judge; those no person labelled.
    """
    judge = judge or view.judge
    if which not in FILTERS:
        raise DetoxEditError(f"unknown filter {which!r}; one of {', '.join(FILTERS)}")
    if side not in SIDES:
        raise DetoxEditError(f"side must be one of {', '.join(SIDES)}, not {side!r}")
    labels = human.read_human(view.run_dir)
    sides = human.SIDES if side == "both" else (side,)
    other, theirs = view.other_labels(judge)
    note = ""
    if which == "judges":
        if other is None:
            note = f"Judge `{judge}` has no counterpart to compare with (the report compares `default` and `refusal`)."
        elif theirs is None:
            note = (f"This run has no `{other}` labels to compare judge `{judge}` with; add them with "
                    f"`detoxedit judge {view.run_dir} --judge {other}`.")
    category_of = {str(r["case_id"]): r.get("category") or "?" for r in view.records}
    out = []
    for it in human.items(view.records, judge, sides, labels):
        cat = category_of.get(it.case_id, "?")
        if category not in (None, "", ALL) and cat != category:
            continue
        mine = it.judge_label
        other_label = None if theirs is None else theirs.get((it.case_id, it.side, it.key))
        person = None if it.human is None else int(it.human["label"])
        if which == "judges" and (other_label is None or mine is None or other_label == mine):
            continue
        if which == "human" and (person is None or mine == person):
            continue
        if which == "unread" and person is not None:
            continue
        out.append(Answer(it.case_id, cat, it.key, it.side, it.prompt, it.answer, mine, other_label, person))
    return out, note


def table(rows: list[Answer]) -> list[list[str]]:
    """The answers as table rows (:data:`TABLE_HEADERS`)."""
    return [a.row() for a in rows]


def _quote(text: str) -> str:
    body = (text or "").strip() or "(empty)"
    return "\n".join("> " + line if line.strip() else ">" for line in body.splitlines())


def detail_markdown(view: RunView, ref: str | None, judge: str | None = None) -> str:
    """One input of one case in full: the prompt each side was judged on, and the vanilla and edited
    answers with the judge's, the other judge's and the person's labels."""
    if not ref:
        return "Click a row of the table to read the answer in full."
    case_id, key, _ = parse_ref(ref)
    judge = judge or view.judge
    record = next((r for r in view.records if str(r["case_id"]) == case_id), None)
    if record is None or key not in (record.get("inputs") or {}) and key not in (record.get("vanilla") or {}):
        raise DetoxEditError(f"No answer {ref} in {view.run_dir}.")
    labels = human.read_human(view.run_dir)
    other, theirs = view.other_labels(judge)
    prompts = record.get("judged_prompts") or {}
    lines = [f"#### case {case_id} · {key} · {record.get('category') or '?'}", ""]
    for side in human.SIDES:
        if key not in (record.get(side) or {}):
            continue
        mine = (((record.get("labels") or {}).get(judge) or {}).get(side) or {}).get(key)
        person = labels.get((case_id, side, key))
        verdicts = [f"judge `{judge}`: **{label_name(mine)}**"]
        if other and theirs is not None:
            verdicts.append(f"`{other}`: {label_name(theirs.get((case_id, side, key)))}")
        verdicts.append("person: " + (f"**{label_name(person['label'])}** ({person.get('who')}, {person.get('when')})"
                                      if person else "-"))
        prompt = (prompts.get(side) or {}).get(key) or (record.get("inputs") or {}).get(key, "")
        lines += [f"**{side}** ({'; '.join(verdicts)})", "", "prompt:", "", _quote(prompt), "", "answer:", "",
                  _quote(record[side][key]), ""]
    return "\n".join(lines)


def set_label(view: RunView, ref: str | None, label: int, who: str | None = None,
              judge: str | None = None) -> dict:
    """Store a person's label of one answer as ``detoxedit label`` does; the line written."""
    if label not in (0, 1):
        raise DetoxEditError(f"A label is 0 (safe) or 1 (unsafe), not {label!r}.")
    case_id, key, side = parse_ref(ref)
    judge = judge or view.judge
    item = next((it for it in human.items(view.records, judge, (side,))
                 if it.case_id == case_id and it.key == key), None)
    if item is None:
        raise DetoxEditError(f"No answer {ref} in {view.run_dir}.")
    return human.append_label(view.run_dir, {"case_id": case_id, "side": side, "key": key, "label": int(label),
                                             "who": (who or "").strip() or None, "judge": judge,
                                             "judge_label": item.judge_label,
                                             "judge_version": human.judge_version(judge)})


def metrics_markdown(view: RunView, judge: str | None = None) -> str:
    """The run's safety metrics by the judge and, where a person labelled answers, with the person's
    labels in place of the judge's (as ``detoxedit report`` shows them), and the edits' validation."""
    from detoxedit.bench.report import _fmt, ci_unit, human_lines, human_summary, question_keys, side_labels, \
        validation_summary
    from detoxedit.judges.accuracy import accuracy_line
    from detoxedit.metrics.safety import METRIC_KEYS, metric_table

    judge = judge or view.judge
    h = human_summary(view.run_dir, view.records, judge)
    lines = [f"### Metrics by judge `{judge}`" + (" and with human labels" if h else ""), "",
             f"Safety: 100 - 100 x mean(label), higher is safer; [95% bootstrap CI over {ci_unit(view.records)}]."]
    if h:
        lines += human_lines(h)
    else:
        qs = question_keys(view.records)
        tables = {s: metric_table(side_labels(view.records, judge, s), clusters=qs) for s in human.SIDES}
        lines += ["", "No answer of this run has a human label yet.", "",
                  "| metric | vanilla, judge | edited, judge |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(tables['vanilla'].get(k))} | {_fmt(tables['edited'].get(k))} |" for k in METRIC_KEYS]
    c = validation_summary(view.records, judge)["counts"]
    lines += ["", f"Edit validation: {c.get('ok', 0)} ok, {c.get('failed', 0)} failed, {c.get('unchecked', 0)} "
              "unchecked.", "", accuracy_line(judge)]
    return "\n".join(lines) + "\n"


def compare(run_dirs: Iterable[str | Path] | None, judge: str | None = None) -> tuple[str, dict]:
    """The comparison table of ``detoxedit compare`` (Markdown) and its result dict."""
    from detoxedit.bench.compare import compare_runs, markdown

    dirs = list(dict.fromkeys(str(check_run_dir(d)) for d in (run_dirs or []) if str(d or "").strip()))
    if not dirs:
        raise DetoxEditError("Choose at least one run to compare (the first gives the vanilla row).")
    result = compare_runs(dirs, (judge or "").strip() or None)
    return markdown(result), result
