"""Compare finished runs in one table, laid out like the SafeEdit paper's Table 1 (methods as rows).

``detoxedit compare RUN_DIR... --out DIR`` writes ``compare.md``, ``compare.html`` and ``compare.json``:

* one ``vanilla`` row, from the first run (its vanilla side); a warning when another run's vanilla
  responses differ on shared cases (another model, decoding setting or protocol, so the rows are not
  measured against the same baseline);
* one row per run, its edited side, labelled by the method key (plus the run directory's name when two
  runs share a method);
* columns DS, DG_onlyQ, DG_otherA, DG_otherQ, DG_otherAQ, DG-Avg (``detoxedit.metrics.safety``), Fluency
  (mean n-gram entropy of a case's responses), KQA, CSum and, when any run measured it, over-refusal
  (from ``RUN_DIR/general.json``, as ``detoxedit report`` reads it), each with its 95% bootstrap CI over
  cases (the safety metrics' over questions where cases share one, said in a footnote), and the number of cases;
* when any run measured it after each edit (``bench``'s over-refusal check), ``Harmless refused``: the %
  of answers to built-in harmless prompts that open with an explicit refusal, 95% bootstrap CI over
  (case, prompt) answers (``detoxedit.bench.report.overrefusal_table``), next to DG-Avg;
* when any run's records carry an edit validation, ``Failed edits``: failed / cases, with the number
  left unchecked (``detoxedit.bench.report.validation_summary`` under the compared judge);
* a paired section: every other run's edited side minus the first run's, on the cases both ran, for DS
  and DG-Avg with a 95% paired-bootstrap CI (e.g. tuned settings against the hand-set ones: the pairing
  lets the CI exclude zero where the two rows' own CIs overlap), and the same difference with the human
  labels of both runs (``detoxedit label``) where a person read every edited answer of the shared cases;
* a metric a run lacks (e.g. a ``SafeEdit_test_ALL``-style run has only DG_onlyQ and DG_otherAQ) shows
  as "—"; a run whose method does not learn from the instance (``edit.uses_instance`` false in its
  records) shows DS as "—" with a footnote, since it is not a defense success on an edited instance in
  the paper's sense, while compare.json keeps the number.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from detoxedit.bench.report import (OVERREFUSAL_COLUMN, _fmt, ci_unit, disagreements, general_columns, html_page,
                                    load_run, overrefusal_table, question_keys, side_labels, validation_summary,
                                    write_texts)
from detoxedit.errors import DetoxEditError
from detoxedit.metrics.safety import METRIC_KEYS, bootstrap_ci, metric_table

log = logging.getLogger(__name__)

MISSING = "—"
FAILED_COLUMN = "Failed edits"


def _ci(value, low, high, n=None) -> dict:
    return {"value": value, "ci_low": low, "ci_high": high, "n": n}


def fluency_entry(records: list[dict], side: str, seed: int = 0) -> dict | None:
    """Mean per-case fluency of one side with a percentile bootstrap CI over cases."""
    vals = [r["fluency"][side] for r in records if (r.get("fluency") or {}).get(side) is not None]
    if not vals:
        return None
    lo, hi = bootstrap_ci(vals, seed=seed)
    return _ci(sum(vals) / len(vals), lo, hi, len(vals))


def general_entries(run_dir: Path, side: str) -> dict[str, dict | None]:
    """KQA, CSum and over-refusal of one side from ``general.json``.

    Vanilla: the number and its bootstrap CI (``vanilla_detail``). Edited: the mean over the K evaluated
    edits; with K = 1 the CI of that edit (from ``general.records.jsonl``), with K > 1 no CI but the
    standard deviation over edits (``std``, ``k``).
    """
    out: dict[str, dict | None] = {col: None for col, _, _ in general_columns()}
    path = run_dir / "general.json"
    if not path.is_file():
        return out
    try:
        g = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DetoxEditError(f"{path}: cannot read ({e})") from None
    records = []
    if side == "edited" and g.get("k") == 1 and (run_dir / "general.records.jsonl").is_file():
        from detoxedit.bench.records import read_run_records
        records = read_run_records(run_dir, pattern="general.records.jsonl")
    for col, task, key in general_columns():
        if side == "vanilla":
            value = (g.get("vanilla") or {}).get(task, {}).get(key)
            if value is None:
                continue
            ci = (((g.get("vanilla_detail") or {}).get(task) or {}).get("ci") or {}).get(key) or [None, None]
            out[col] = _ci(value, ci[0], ci[1], (g.get("vanilla") or {}).get(task, {}).get("n"))
        else:
            cell = ((g.get("edited") or {}).get(task) or {}).get(key)
            if not cell:
                continue
            entry = _ci(cell["mean"], None, None)
            if len(records) == 1:
                ci = (records[0]["results"].get(task, {}).get("ci") or {}).get(key)
                if ci:
                    entry["ci_low"], entry["ci_high"] = ci
            else:
                entry.update(std=cell.get("std"), k=g.get("k"))
            out[col] = entry
    return out


def _uses_instance(records: list[dict]) -> bool:
    flags = {r.get("edit", {}).get("uses_instance") for r in records}
    return False not in flags


def side_row(run_dir: Path, records: list[dict], judge: str, side: str, seed: int = 0) -> dict:
    """All columns of one side of one run: ``{column: CI entry or None}``."""
    table = metric_table(side_labels(records, judge, side), seed=seed, clusters=question_keys(records))
    metrics = {k: table.get(k) for k in METRIC_KEYS}
    orf = overrefusal_table(records, seed)
    metrics[OVERREFUSAL_COLUMN] = orf[side] if orf else None
    metrics["Fluency"] = fluency_entry(records, side, seed)
    metrics.update(general_entries(run_dir, side))
    return metrics


def _vanilla_mismatch(first: list[dict], other: list[dict]) -> tuple[int, int]:
    """(cases whose vanilla responses differ, shared cases) between two runs."""
    by_id = {r["case_id"]: r.get("vanilla") for r in first}
    shared = [r for r in other if r["case_id"] in by_id]
    return sum(by_id[r["case_id"]] != r.get("vanilla") for r in shared), len(shared)


def compare_runs(run_dirs: list[str | Path], judge: str | None = None, seed: int = 0) -> dict:
    """The comparison as a JSON-able dict: columns, rows (vanilla first), footnotes, warnings."""
    if not run_dirs:
        raise DetoxEditError("compare needs at least one run directory")
    runs = []
    for d in run_dirs:
        d = Path(d)
        cfg, records = load_run(d)
        if not records:
            raise DetoxEditError(f"{d} has no finished cases yet")
        runs.append((d, cfg, records))
    judge = judge or runs[0][1].get("judge") or "default"
    for d, _, records in runs:
        lacking = [r["case_id"] for r in records if judge not in r.get("labels", {})]
        if lacking:
            raise DetoxEditError(f"{d}: {len(lacking)} case(s) have no labels from judge {judge!r} (e.g. case "
                                 f"{lacking[0]}); label them with: detoxedit judge {d} --judge {judge}")
    warnings = []
    first_dir, first_cfg, first_records = runs[0]
    for d, cfg, records in runs[1:]:
        differ, shared = _vanilla_mismatch(first_records, records)
        if shared == 0:
            warnings.append(f"{d.name} shares no case with {first_dir.name}: its rows are not measured on the "
                            "same cases as the vanilla row")
        elif differ:
            warnings.append(f"{d.name}: vanilla responses differ from {first_dir.name}'s on {differ} of {shared} "
                            "shared cases (another model, decoding setting or protocol?); the vanilla row is "
                            f"{first_dir.name}'s")
    methods = [cfg.get("method") or "?" for _, cfg, _ in runs]
    cols = list(METRIC_KEYS) + ["Fluency", "KQA", "CSum"]
    rows = [{"label": "vanilla", "run": str(first_dir), "method": None, "side": "vanilla",
             "uses_instance": None, "n_cases": len(first_records),
             "metrics": side_row(first_dir, first_records, judge, "vanilla", seed)}]
    for (d, cfg, records), method in zip(runs, methods):
        label = method if methods.count(method) == 1 else f"{method} ({d.name})"
        rows.append({"label": label, "run": str(d), "method": method, "side": "edited",
                     "uses_instance": _uses_instance(records), "n_cases": len(records),
                     "model": cfg.get("model"), "data": cfg.get("data"), "split": cfg.get("split"),
                     "protocol": cfg.get("protocol"),
                     "metrics": side_row(d, records, judge, "edited", seed),
                     "validation": validation_summary(records, judge)
                     if any((r.get("edit") or {}).get("validation") for r in records) else None})
    if any(r["metrics"].get(OVERREFUSAL_COLUMN) for r in rows):
        cols.insert(cols.index("DG-Avg") + 1, OVERREFUSAL_COLUMN)
    if any(r["metrics"].get("Over-refusal") for r in rows):
        cols.append("Over-refusal")
    if any(r.get("validation") for r in rows):
        cols.append(FAILED_COLUMN)
    footnotes = []
    for d, _, records in runs:
        unit = ci_unit(records)
        if unit != "cases":
            footnotes.append(f"{d.name}: its CIs (and its paired ones) resample {unit}.")
    if any(r["uses_instance"] is False for r in rows):
        footnotes.append("† the method does not learn from the edited instance (uses_instance = false), so its DS "
                         "is not a defense success on an edited instance in the paper's sense; compare.json keeps "
                         "the number.")
    for d, _, records in runs:
        dis = disagreements(records, judge)
        if dis and dis["n"]:
            footnotes.append(f"{d.name}: judges `{judge}` and `{dis['other']}` disagree on {len(dis['items'])} of "
                             f"{dis['n']} answers (listed in its report.html).")
        h = human_footnote(d, records, judge)
        if h:
            footnotes.append(h)
    for w in warnings:
        log.warning(w)
    paired = [paired_against_first(first_dir, first_records, d, records, judge, seed) for d, _, records in runs[1:]]
    return {"judge": judge, "columns": cols, "rows": rows, "footnotes": footnotes, "warnings": warnings,
            "runs": [str(d) for d, _, _ in runs], "paired": [p for p in paired if p]}


PAIRED_METRICS = ("DS", "DG-Avg")


def shared_cases(first: list[dict], records: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(firsts, shared)``: the records of ``records`` whose case ``first`` also ran, and ``first``'s record
    of each, in the same order (the pairs a paired difference compares)."""
    by_id = {r["case_id"]: r for r in first}
    shared = [r for r in records if r["case_id"] in by_id]
    return [by_id[r["case_id"]] for r in shared], shared


def edited_difference(firsts: list[dict], shared: list[dict], judge: str, seed: int = 0) -> dict:
    """Edited side of ``shared`` minus edited side of ``firsts`` (paired lists, :func:`shared_cases`) for
    every metric, with the paired bootstrap CI (``metrics.safety.paired_difference``)."""
    from detoxedit.metrics.safety import paired_difference

    return paired_difference(side_labels(firsts, judge, "edited"), side_labels(shared, judge, "edited"), seed=seed,
                             clusters=question_keys(shared))


def paired_against_first(first_dir: Path, first: list[dict], run_dir: Path, records: list[dict], judge: str,
                         seed: int = 0) -> dict | None:
    """A run's edited side minus the first run's edited side on the cases both ran (e.g. tuned settings
    against the hand-set ones), with a paired bootstrap CI: each resample draws the same cases for both,
    so the interval reflects the pairing and can exclude zero where two separate CIs overlap. None when
    the runs share no case."""
    firsts, shared = shared_cases(first, records)
    if not shared:
        return None
    diff = edited_difference(firsts, shared, judge, seed)
    out = {"run": str(run_dir), "against": str(first_dir), "n": len(shared),
           "change": {k: diff.get(k) for k in PAIRED_METRICS}}
    read = read_change(first_dir, firsts, run_dir, shared, judge, seed)
    if read is not None:
        out["change_read"] = read
    return out


def read_change(first_dir: Path, firsts: list[dict], run_dir: Path, shared: list[dict], judge: str,
                seed: int = 0) -> dict | None:
    """The paired change of :func:`paired_against_first` with the person's labels (``detoxedit label``)
    in place of the judge's, when a person read every edited answer of the shared cases in both runs;
    else None (a partly read pair would mix the two readers' labels in one difference)."""
    from detoxedit.bench.human import read_human, reading_queue, with_human

    h_first, h_run = read_human(first_dir), read_human(run_dir)
    if not (h_first and h_run) or reading_queue(firsts, judge, ("edited",), h_first) \
            or reading_queue(shared, judge, ("edited",), h_run):
        return None  # some edited answer is still unread
    diff = edited_difference(with_human(firsts, judge, h_first), with_human(shared, judge, h_run), judge, seed)
    return {k: diff.get(k) for k in PAIRED_METRICS}


def human_footnote(run_dir: Path, records: list[dict], judge: str) -> str | None:
    """A line on the run's human labels (``detoxedit label``): how many answers a person read, the
    judge's agreement with them, and DS / DG-Avg (edited side) by the judge and with the person's labels."""
    from detoxedit.bench.report import human_summary

    h = human_summary(run_dir, records, judge)
    if not h:
        return None
    a = h["agreement"]
    rate = "-" if a["rate"] is None else f"{100 * a['rate']:.0f}%"

    def both(k):
        j, w = h["judge"]["edited"].get(k) or {}, h["with_human"]["edited"].get(k) or {}
        f = (lambda c: "-" if c.get("value") is None else f"{c['value']:.2f}")
        return f"{k} {f(j)} by the judge, {f(w)} with human labels"

    return (f"{run_dir.name}: {a['read']} answers read by a person, the judge agrees on {a['agree']} ({rate}); "
            f"edited: {both('DS')}; {both('DG-Avg')} (report.html shows every metric both ways).")


def failed_text(validation: dict | None) -> str:
    """``failed/checked`` edits, e.g. ``1/3`` (and ``+2 unchecked``); — when the run recorded none."""
    if not validation:
        return MISSING
    c = validation["counts"]
    text = f"{c.get('failed', 0)}/{c.get('failed', 0) + c.get('ok', 0)}"
    return text + (f" (+{c['unchecked']} unchecked)" if c.get("unchecked") else "")


def cell_text(row: dict, col: str) -> str:
    if col == FAILED_COLUMN:
        return failed_text(row.get("validation"))
    entry = row["metrics"].get(col)
    if col == "DS" and row.get("uses_instance") is False:
        return MISSING + "†"
    if not entry or entry.get("value") is None:
        return MISSING
    text = _fmt(entry)
    if entry.get("k"):
        text += f" ± {entry['std']:.2f} (K={entry['k']})"
    return text


def markdown(result: dict) -> str:
    from detoxedit.judges.accuracy import accuracy_line

    cols = result["columns"]
    lines = ["# detoxedit comparison", "",
             f"Judge `{result['judge']}`. Safety metrics are 100 - 100 x mean(label) (higher is safer); every "
             "cell is value [95% bootstrap CI over cases, or over their questions where a footnote says so]. The "
             "vanilla row is the first run's unedited model; "
             "the other rows are each run's edited side. — = not measured.", accuracy_line(result["judge"]), "",
             "| method | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for row in result["rows"]:
        lines.append(f"| {row['label']} | {row['n_cases']} | " + " | ".join(cell_text(row, c) for c in cols) + " |")
    lines.append("")
    if "KQA" in cols:
        lines.append("KQA = whole-word answer match, CSum = ROUGE-1 F1, Over-refusal = % of harmless prompts "
                     "refused (from RUN_DIR/general.json); with K > 1 evaluated edits: mean ± std over edits.")
    if OVERREFUSAL_COLUMN in cols:
        lines.append(f"{OVERREFUSAL_COLUMN} = % of answers to built-in harmless prompts that open with an explicit "
                     "refusal after each edit (lower is better); CI over (case, prompt) answers.")
    if FAILED_COLUMN in cols:
        lines.append(f"{FAILED_COLUMN} = edits whose validation failed / edits checked (the method's checks, and the "
                     "judge on the edited answer to the edited input).")
    if result.get("paired"):
        any_read = any(p.get("change_read") for p in result["paired"])
        first = Path(result["runs"][0]).name
        lines += ["", f"Paired against the first run ({first}), edited side minus edited side on the cases both "
                  "ran, 95% paired-bootstrap CI (a CI that excludes 0 is a difference these cases can tell):", "",
                  "| run | cases | " + " | ".join(f"{k} change" for k in PAIRED_METRICS)
                  + "".join(f" | {k} change, read" for k in PAIRED_METRICS if any_read) + " |",
                  "|---|---|" + "---|" * len(PAIRED_METRICS) * (2 if any_read else 1)]
        for p in result["paired"]:
            read = p.get("change_read")
            lines.append(f"| {Path(p['run']).name} | {p['n']} | "
                         + " | ".join(_fmt(p["change"].get(k), 1) for k in PAIRED_METRICS)
                         + "".join(f" | {_fmt(read.get(k), 1) if read else MISSING}" for k in PAIRED_METRICS
                                   if any_read) + " |")
        if any_read:
            lines += ["", "\"read\": the same difference with the human labels of both runs (`detoxedit label`), "
                      "where a person read every edited answer of the shared cases in both; — where not."]
        lines.append("")
    lines += result["footnotes"]
    lines += [f"Warning: {w}" for w in result["warnings"]]
    lines += ["", "Runs: " + ", ".join(f"`{r}`" for r in result["runs"])]
    return "\n".join(lines) + "\n"


def write_comparison(run_dirs: list[str | Path], out_dir: str | Path = "compare", judge: str | None = None,
                     seed: int = 0) -> dict[str, Path]:
    result = compare_runs(run_dirs, judge, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(result)
    files = {"md": out / "compare.md", "html": out / "compare.html", "json": out / "compare.json"}
    page = html_page("detoxedit comparison", md, width=1200,
                     extra_css="td,th{white-space:nowrap}tr:nth-child(2) td{background:#fafafa}")
    write_texts({files["md"]: md, files["html"]: page, files["json"]: json.dumps(result, indent=2)})
    return files
