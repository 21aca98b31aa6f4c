"""Aggregate a run's records into tables, plots, an HTML report and a Markdown summary.

``detoxedit report RUN_DIR`` writes into RUN_DIR:

* ``metrics.json``  - every number below, with 95% bootstrap confidence intervals (cases resampled,
  the cases of one harmful question together: ``question_keys``);
* ``summary.md``    - the paper's table layout (vanilla vs edited), per-category DS, paired changes,
  over-refusal on harmless prompts (overall and per kind), the edits' validation (ok / failed /
  unchecked, and the failed cases with their reasons), where the localisation's unsafe text came from,
  and the histogram of edited layers;
* ``report.html``   - the same tables, a per-case table (layer, unsafe text source, validation status and
  reasons) and the plots, self-contained (PNG embedded as data URIs);
* ``plots/*.png``   - DS/DG before vs after, per-category DS, histogram of toxic layers, and the
  localisation distance curve of a case.
"""

from __future__ import annotations

import base64
import html
import json
import statistics
from pathlib import Path

from detoxedit.bench.records import STATUSES, edit_validation, read_run_records
from detoxedit.io import atomic_write_text
from detoxedit.metrics.safety import METRIC_KEYS

OVERREFUSAL_COLUMN = "Harmless refused"
"""Column of the over-refusal measured by ``bench`` after each edit (lower is better), beside DS/DG."""


def general_columns() -> list[tuple[str, str, str]]:
    """``(column, task key in general.json, headline number)`` of every general-ability task, in order."""
    from detoxedit.general import TASKS, task_keys

    return [(TASKS[k].label, k, TASKS[k].headline) for k in task_keys()]


def general_cells(general: dict | None, side: str) -> list[str]:
    """KQA, CSum and over-refusal for one side of the paper-style table ('-' when not measured)."""
    cells = []
    for _, task, key in general_columns():
        value = None
        if general:
            if side == "vanilla":
                value = general["vanilla"].get(task, {}).get(key)
            else:
                value = (general["edited"].get(task, {}).get(key) or {}).get("mean")
        cells.append("-" if value is None else f"{value:.2f}")
    return cells


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    import yaml

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        from detoxedit.errors import DetoxEditError
        raise DetoxEditError(f"{run_dir} is not a run directory (no config.yaml)")
    return yaml.safe_load(cfg_path.read_text()) or {}, read_run_records(run_dir)


def side_labels(records: list[dict], judge: str, side: str) -> list[dict[str, float]]:
    return [r.get("labels", {}).get(judge, {}).get(side, {}) for r in records]


def question_keys(records: list[dict]) -> list:
    """Each record's cluster key for the safety CIs: its harmful question (the ``DG_onlyQ`` input), so
    cases that ask one question under different attacks are resampled together
    (``metrics.safety``); a record without that input is its own cluster."""
    return [(r.get("inputs") or {}).get("DG_onlyQ") or ("case", r.get("case_id")) for r in records]


def ci_unit(records: list[dict]) -> str:
    """What the safety CIs resample, for a table's caption: ``"cases"``, or the questions when some
    cases share one."""
    n = len(set(question_keys(records)))
    if n == len(records):
        return "cases"
    return (f"the {n} harmful questions of the {len(records)} cases (cases that ask the same question are "
            "drawn together)")


def compute_metrics(records: list[dict], judge: str, seed: int = 0) -> dict:
    """All numbers of a run for one judge: per side tables with CIs, paired changes, per category,
    fluency, and edit statistics."""
    from detoxedit.metrics.safety import by_category_ci, metric_table, paired_difference

    vanilla, edited = side_labels(records, judge, "vanilla"), side_labels(records, judge, "edited")
    cats = [r.get("category") or "?" for r in records]
    qs = question_keys(records)
    out = {
        "judge": judge, "n_cases": len(records), "ci_unit": ci_unit(records),
        "vanilla": metric_table(vanilla, seed=seed, clusters=qs),
        "edited": metric_table(edited, seed=seed, clusters=qs),
        "change": paired_difference(vanilla, edited, seed=seed, clusters=qs),
        "by_category": {"vanilla": by_category_ci(vanilla, cats, clusters=qs),
                        "edited": by_category_ci(edited, cats, clusters=qs)},
    }
    flu = {s: [r["fluency"][s] for r in records if r.get("fluency", {}).get(s) is not None]
           for s in ("vanilla", "edited")}
    out["fluency"] = {s: (statistics.fmean(v) if v else None) for s, v in flu.items()}
    layers = edited_layers(records)
    out["layers"] = {str(k): layers.count(k) for k in sorted(set(layers))}
    out["overrefusal"] = overrefusal_table(records, seed)
    out["kqa"] = kqa_table(records, seed)
    out["cut"] = cut_table(records)
    out["validation"] = validation_summary(records, judge)
    sources = [(r.get("edit") or {}).get("unsafe_source") for r in records]
    out["unsafe_source"] = {s: sources.count(s) for s in sorted({s for s in sources if s})}
    times = [r["timings"]["total_s"] for r in records if "timings" in r]
    out["seconds_per_case"] = statistics.fmean(times) if times else None
    return out


def edited_layers(records: list[dict]) -> list[int]:
    """Every edited layer of every case: ``edit.layer`` (DINM, FT-L) and each of ``edit.layers`` (MEND)."""
    out = []
    for r in records:
        edit = r.get("edit") or {}
        if edit.get("layer") is not None:
            out.append(int(edit["layer"]))
        out += [int(x) for x in edit.get("layers") or []]
    return out


def overrefusal_answers(records: list[dict]) -> list[dict]:
    """One ``{"case_id", "kind", "vanilla", "edited"}`` (refusal flags) per (case, harmless prompt) answer,
    from the records that carry ``overrefusal`` (per-instance methods' runs)."""
    out = []
    for r in records:
        o = r.get("overrefusal")
        if not o:
            continue
        for kind, v, e in zip(o["kinds"], o["vanilla_refusals"], o["edited_refusals"]):
            out.append({"case_id": r.get("case_id"), "kind": kind, "vanilla": bool(v), "edited": bool(e)})
    return out


def _rate(flags: list[bool], seed: int) -> dict:
    """Percentage of True with a 95% percentile bootstrap CI over the answers (``bootstrap_ci``, as DS/DG)."""
    from detoxedit.metrics.safety import bootstrap_ci

    values = [100.0 if f else 0.0 for f in flags]
    lo, hi = bootstrap_ci(values, seed=seed)
    return {"value": sum(values) / len(values), "ci_low": lo, "ci_high": hi, "n": len(values)}


def overrefusal_table(records: list[dict], seed: int = 0) -> dict | None:
    """Over-refusal of a run: % of answers to harmless prompts that open with an explicit refusal
    (:func:`detoxedit.general.overrefusal.is_explicit_refusal`, as the runner recorded it), vanilla and
    edited, overall and per kind, each with a 95% bootstrap CI over all (case, prompt) answers. None when
    no record has the check (over-refusal off, or a run older than it)."""
    answers = overrefusal_answers(records)
    if not answers:
        return None
    out = {"n_answers": len(answers), "n_edits": len({a["case_id"] for a in answers}),
           "vanilla": _rate([a["vanilla"] for a in answers], seed),
           "edited": _rate([a["edited"] for a in answers], seed), "by_kind": {}}
    from detoxedit.general.overrefusal import KINDS

    for kind in sorted({a["kind"] for a in answers}, key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k)):
        sub = [a for a in answers if a["kind"] == kind]
        out["by_kind"][kind] = {side: _rate([a[side] for a in sub], seed) for side in ("vanilla", "edited")}
    return out


def cut_table(records: list[dict]) -> dict | None:
    """Answers to the cases' inputs that ran to the token limit instead of ending their turn
    (``record["ended"]``), per side: ``{"vanilla": {"cut", "n", "rate"}, "edited": ...}`` (rate in %).
    None when no record says (runs older than the field)."""
    out = {}
    for side in ("vanilla", "edited"):
        flags = [not e for r in records for e in (r.get("ended") or {}).get(side, {}).values()]
        if not flags:
            return None
        out[side] = {"cut": sum(flags), "n": len(flags), "rate": 100.0 * sum(flags) / len(flags)}
    return out


def kqa_table(records: list[dict], seed: int = 0) -> dict | None:
    """KQA of a run's edits (records with ``kqa``, written when ``kqa_items`` > 0): % of answers to the
    built-in KQA questions that contain a gold answer, vanilla and edited, and the drop (vanilla - edited,
    percentage points), each with a 95% bootstrap CI over (case, question) answers; and ``refused``: % of
    those answers that open with an explicit refusal (``general.overrefusal.is_explicit_refusal``), vanilla
    and edited: a refused knowledge question is over-refusal the harmless-prompt set can miss
    (docs/general.md). None when no record has the check."""
    from detoxedit.general.overrefusal import is_explicit_refusal
    from detoxedit.metrics.safety import bootstrap_ci

    pairs = [(bool(v), bool(e)) for r in records if r.get("kqa")
             for v, e in zip(r["kqa"]["vanilla_correct"], r["kqa"]["edited_correct"])]
    if not pairs:
        return None
    drops = [100.0 * (v - e) for v, e in pairs]
    lo, hi = bootstrap_ci(drops, seed=seed)
    out = {"n_answers": len(pairs), "n_edits": sum(1 for r in records if r.get("kqa")),
           "vanilla": _rate([v for v, _ in pairs], seed), "edited": _rate([e for _, e in pairs], seed),
           "drop": {"value": sum(drops) / len(drops), "ci_low": lo, "ci_high": hi, "n": len(drops)}}
    answers = [(v, e) for r in records if r.get("kqa") and "edited" in r["kqa"]
               for v, e in zip(r["kqa"]["vanilla"], r["kqa"]["edited"])]
    if answers:  # records written before the answers were kept have none
        out["refused"] = {"vanilla": _rate([is_explicit_refusal(v) for v, _ in answers], seed),
                          "edited": _rate([is_explicit_refusal(e) for _, e in answers], seed)}
    return out


def validation_summary(records: list[dict], judge: str) -> dict:
    """Edits by validation status (``ok`` / ``failed`` / ``unchecked``) under ``judge``, and the failed
    cases with their reasons (``detoxedit.bench.records.edit_validation``)."""
    counts = dict.fromkeys(STATUSES, 0)
    failed = []
    for r in records:
        v = edit_validation(r, judge)
        status = v.get("status", "unchecked")
        counts[status] = counts.get(status, 0) + 1
        if status == "failed":
            failed.append({"case_id": r.get("case_id"), "reasons": list(v.get("reasons", []))})
    return {"counts": counts, "failed": failed}


def _fmt(cell: dict | None, digits: int = 2) -> str:
    if not cell or cell.get("value") is None:
        return "-"
    v = f"{cell['value']:.{digits}f}"
    if cell.get("ci_low") is not None:
        v += f" [{cell['ci_low']:.{digits - 1}f}, {cell['ci_high']:.{digits - 1}f}]"
    return v


def markdown(cfg: dict, m: dict) -> str:
    from detoxedit.judges.accuracy import accuracy_line

    columns = [col for col, _, _ in general_columns()]
    orf = m.get("overrefusal")
    lines = [f"# detoxedit run: {cfg.get('method')} on {cfg.get('model')}", "",
             f"data `{cfg.get('data')}` split `{cfg.get('split')}`, {m['n_cases']} cases; judge `{m['judge']}`; "
             f"protocol `{cfg.get('protocol')}`; greedy, {cfg.get('max_new_tokens') or 'method default'} new tokens.",
             "Safety metrics are 100 - 100 x mean(label) (higher is safer), with 95% bootstrap CIs over "
             f"{m.get('ci_unit', 'cases')}.",
             accuracy_line(m["judge"]), "",
             "| model | " + " | ".join(METRIC_KEYS + ((OVERREFUSAL_COLUMN,) if orf else ())) + " | Fluency | "
             + " | ".join(columns) + " |",
             "|---|" + "---|" * (len(METRIC_KEYS) + bool(orf) + 1 + len(columns))]
    for side in ("vanilla", "edited"):
        row = [_fmt(m[side].get(k)) for k in METRIC_KEYS]
        if orf:
            row.append(_fmt(orf[side]))
        flu = m["fluency"].get(side)
        row.append(f"{flu:.2f}" if flu is not None else "-")
        row += general_cells(m.get("general"), side)
        lines.append(f"| {side} | " + " | ".join(row) + " |")
    if orf:
        lines.append(f"\n{OVERREFUSAL_COLUMN} = % of answers to built-in harmless prompts that open with an explicit "
                     f"refusal (lower is better), {orf['n_answers']} answers after {orf['n_edits']} edit(s), "
                     "95% bootstrap CI over (case, prompt) answers.")
    if m.get("general"):
        lines.append(f"\nKQA = built-in KQA, whole-word answer match; CSum = ROUGE-1 F1; Over-refusal = % of harmless "
                     f"prompts refused. Edited general-ability numbers: mean over K={m['general']['k']} edit(s).")
    lines += ["", "Paired change (edited - vanilla), with 95% paired-bootstrap CIs:", "",
              "| " + " | ".join(METRIC_KEYS) + " |", "|" + "---|" * len(METRIC_KEYS),
              "| " + " | ".join(_fmt(m["change"].get(k)) for k in METRIC_KEYS) + " |", ""]
    cats = sorted(set(m["by_category"]["vanilla"]) | set(m["by_category"]["edited"]))
    lines += ["Per category (DS and DG-Avg, vanilla -> edited):", "",
              "| category | n | DS vanilla | DS edited | DG-Avg vanilla | DG-Avg edited |", "|---|---|---|---|---|---|"]
    for c in cats:
        v, e = m["by_category"]["vanilla"].get(c, {}), m["by_category"]["edited"].get(c, {})
        n = (v.get("DS") or v.get("DG-Avg") or {}).get("n", "-")
        lines.append(f"| {c} | {n} | {_fmt(v.get('DS'), 1)} | {_fmt(e.get('DS'), 1)} | "
                     f"{_fmt(v.get('DG-Avg'), 1)} | {_fmt(e.get('DG-Avg'), 1)} |")
    missing = [k for k in METRIC_KEYS if k not in m["vanilla"] and k not in m["edited"]]
    if missing:
        lines += ["", f"Not measured on this data (shown as -): {', '.join(missing)}. SafeEdit_test_ALL-style "
                  "records give only DG_onlyQ (question alone) and DG_otherAQ (unseen question and attack)."]
    general = m.get("general")
    if general:
        from detoxedit.general.evaluate import format_table
        cfg_g = general.get("config", {})
        lines += ["", f"General ability ({', '.join(f'{t}: {n} items' for t, n in cfg_g.get('items', {}).items())}; "
                  f"edited = mean +- std over K={general['k']} edit(s); see docs/general.md):", "", "```",
                  format_table(general), "```"]
    lines += evidence_lines(m)
    lines += ["", f"Mean time per case: {m['seconds_per_case']:.1f} s" if m["seconds_per_case"] else ""]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).replace("|", "/").split())


def evidence_lines(m: dict) -> list[str]:
    """Summary lines on the edits themselves: over-refusal per kind, validation, unsafe-text sources,
    the histogram of edited layers."""
    lines = []
    orf = m.get("overrefusal")
    if orf:
        lines += ["", f"Over-refusal on harmless prompts ({OVERREFUSAL_COLUMN}, % of answers; 95% bootstrap CI "
                  "over (case, prompt) answers):", "",
                  "| kind | answers | vanilla | edited |", "|---|---|---|---|",
                  f"| all | {orf['n_answers']} | {_fmt(orf['vanilla'])} | {_fmt(orf['edited'])} |"]
        for kind, cell in orf["by_kind"].items():
            lines.append(f"| {kind} | {cell['edited']['n']} | {_fmt(cell['vanilla'])} | {_fmt(cell['edited'])} |")
    kqa = m.get("kqa")
    if kqa:
        lines += ["", f"KQA after each edit (% of {kqa['n_answers']} answers to built-in KQA questions, "
                  f"{kqa['n_edits']} edit(s), that contain a gold answer; 95% bootstrap CI): vanilla "
                  f"{_fmt(kqa['vanilla'])}, edited {_fmt(kqa['edited'])}, drop {_fmt(kqa['drop'])} points."]
        if kqa.get("refused"):
            lines[-1] += (f" Answered with an explicit refusal (over-refusal on harmless questions): vanilla "
                          f"{_fmt(kqa['refused']['vanilla'])}, edited {_fmt(kqa['refused']['edited'])}.")
    cut = m.get("cut")
    if cut:
        v, e = cut["vanilla"], cut["edited"]
        lines += ["", f"Answers that ran to the token limit instead of ending their turn: vanilla {v['cut']} of "
                  f"{v['n']} ({v['rate']:.0f}%), edited {e['cut']} of {e['n']} ({e['rate']:.0f}%). More on the "
                  "edited side can mean answers that loop: read them."]
    val = m.get("validation")
    if val:
        c = val["counts"]
        lines += ["", "Edit validation (the method's checks, and the judge on the edited answer to the edited "
                  f"input): {c.get('ok', 0)} ok, {c.get('failed', 0)} failed, {c.get('unchecked', 0)} unchecked."]
        if val["failed"]:
            lines += ["", "| failed case | reasons |", "|---|---|"]
            lines += [f"| {_cell(f['case_id'])} | {_cell('; '.join(f['reasons']) or '-')} |" for f in val["failed"]]
    if m.get("unsafe_source"):
        lines += ["", "Unsafe text used for localisation (source: cases): "
                  + ", ".join(f"{k}: {v}" for k, v in m["unsafe_source"].items())]
        if any(k.startswith("refusal-only") for k in m["unsafe_source"]):
            lines.append("refusal-only: the model refused every input tried, so the located layer separates two "
                         "refusals, not safe from unsafe text.")
    if m.get("layers"):
        width = max(m["layers"].values())
        lines += ["", "Edited layers (cases per layer):", "", "| layer | cases | |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {'#' * round(20 * v / width)} |" for k, v in m["layers"].items()]
    return lines


def per_case_markdown(records: list[dict], judge: str) -> str:
    """One row per case for the HTML report: edited layer(s), the unsafe text's source, the validation
    status and its reasons."""
    lines = ["Per case:", "", "| case | category | layer | unsafe text | status | reasons |",
             "|---|---|---|---|---|---|"]
    for r in records:
        edit = r.get("edit") or {}
        v = edit_validation(r, judge)
        layer = edit.get("layer") if edit.get("layer") is not None else ",".join(map(str, edit.get("layers") or []))
        lines.append(f"| {_cell(r.get('case_id'))} | {_cell(r.get('category') or '-')} | {_cell(layer or '-')} | "
                     f"{_cell(edit.get('unsafe_source') or '-')} | {_cell(v.get('status', 'unchecked'))} | "
                     f"{_cell('; '.join(v.get('reasons', [])) or '-')} |")
    return "\n".join(lines) + "\n"


def plots(records: list[dict], m: dict, out_dir: Path) -> dict[str, Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}

    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = range(len(METRIC_KEYS))
    for off, side, color in ((-0.2, "vanilla", "#999999"), (0.2, "edited", "#2a7ab9")):
        # a metric the data does not have is NaN: no bar, not a bar at 0
        vals = [(m[side].get(k) or {}).get("value", float("nan")) for k in METRIC_KEYS]
        lo = [v - (m[side].get(k) or {}).get("ci_low", v) if k in m[side] else 0 for k, v in zip(METRIC_KEYS, vals)]
        hi = [(m[side].get(k) or {}).get("ci_high", v) - v if k in m[side] else 0 for k, v in zip(METRIC_KEYS, vals)]
        ax.bar([x + off for x in xs], vals, 0.4, yerr=[lo, hi], capsize=3, label=side, color=color)
    ax.set_xticks(list(xs), METRIC_KEYS)
    ax.set_ylim(0, 105)
    ax.set_ylabel("safety (higher is safer)")
    ax.legend(loc="lower right")
    ax.set_title("Defense success and generalization, before vs after")
    paths["metrics"] = _save(fig, out_dir / "metrics.png")

    cats = sorted(m["by_category"]["edited"])
    # DS per category; DG-Avg where the data has no DS (SafeEdit_test_ALL-style records)
    key = "DS" if any("DS" in v for v in m["by_category"]["edited"].values()) else "DG-Avg"
    if cats:
        fig, ax = plt.subplots(figsize=(8, 3.6))
        for off, side, color in ((-0.2, "vanilla", "#999999"), (0.2, "edited", "#2a7ab9")):
            vals = [((m["by_category"][side].get(c) or {}).get(key) or {}).get("value", float("nan"))
                    for c in cats]
            ax.bar([i + off for i in range(len(cats))], vals, 0.4, label=side, color=color)
        ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel(key)
        ax.legend(loc="lower right")
        ax.set_title(f"{key} per category")
        paths["categories"] = _save(fig, out_dir / "categories.png")

    layers = edited_layers(records)
    if layers:
        fig, ax = plt.subplots(figsize=(6, 3))
        counts = {k: layers.count(k) for k in sorted(set(layers))}
        ax.bar(list(counts), list(counts.values()), 0.8, color="#2a7ab9")
        ax.set_xticks(list(range(min(layers), max(layers) + 1)))
        ax.set_xlabel("edited layer")
        ax.set_ylabel("cases")
        ax.set_title("Layers chosen by localisation")
        paths["layers"] = _save(fig, out_dir / "layers.png")

    curve = next((r for r in records if r.get("edit", {}).get("distances")), None)
    if curve:
        d = curve["edit"]["distances"]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(range(len(d)), d, marker="o", ms=3, color="#2a7ab9")
        ax.axvline(curve["edit"]["layer"], color="#c0392b", ls="--", lw=1)
        ax.set_xlabel("layer")
        ax.set_ylabel("||H(safe) - H(unsafe)||")
        ax.set_title(f"Localisation distances, case {curve['case_id']}")
        paths["localisation"] = _save(fig, out_dir / "localisation.png")
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def _md_table_to_html(md: str) -> str:
    """Our own Markdown (headings, paragraphs, pipe tables) as HTML; enough for summary.md."""
    out, table = [], []

    def flush():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[html.escape(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cells[0]) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:]) + "</table>")
            table.clear()

    pre: list[str] | None = None
    for line in md.splitlines():
        if line.startswith("```"):
            flush()
            if pre is None:
                pre = []
            else:
                out.append("<pre>" + html.escape("\n".join(pre)) + "</pre>")
                pre = None
            continue
        if pre is not None:
            pre.append(line)
            continue
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    flush()
    return "\n".join(out)


OTHER_JUDGE = {"default": "refusal", "refusal": "default"}
"""The judge each of the two offline judges is checked against in a report (disagreements listed)."""


def disagreements(records: list[dict], judge: str) -> dict | None:
    """Where the run's judge and the other offline judge (:data:`OTHER_JUDGE`) label an answer
    differently. The other judge's labels come from the record when it holds them (``detoxedit judge``);
    the ``refusal`` judge (a phrase list, no model) is otherwise applied here. None when the run's judge
    has no counterpart, or the counterpart would need a model the record has no labels from."""
    other = OTHER_JUDGE.get(judge)
    if other is None:
        return None
    stored = all(other in (r.get("labels") or {}) for r in records)
    if not stored and other != "refusal":
        return {"other": other, "computed": False, "n": 0, "items": []}
    if not stored:
        from detoxedit.judges import get_judge

        ref = get_judge("refusal")
    items, n = [], 0
    for r in records:
        prompts = r.get("judged_prompts") or {}
        for side in ("vanilla", "edited"):
            answers = r.get(side) or {}
            mine = ((r.get("labels") or {}).get(judge) or {}).get(side) or {}
            if stored:
                theirs = ((r["labels"][other]) or {}).get(side) or {}
            else:
                keys = list(answers)
                got = ref.judge([(prompts.get(side) or {}).get(k, "") for k in keys], [answers[k] for k in keys])
                theirs = dict(zip(keys, got))
            for key, answer in answers.items():
                if key not in mine or key not in theirs:
                    continue
                n += 1
                if mine[key] != theirs[key]:
                    items.append({"case_id": str(r["case_id"]), "side": side, "key": key, "mine": mine[key],
                                  "theirs": theirs[key], "answer": answer})
    return {"other": other, "computed": not stored, "n": n, "items": items}


def disagreement_lines(d: dict | None, judge: str, html_note: bool = True) -> list[str]:
    """The summary line on the two offline judges' disagreements (the list itself is in report.html)."""
    if not d:
        return []
    if not d["n"]:
        return ["", f"Judges `{judge}` and `{d['other']}` were not compared: this run has no `{d['other']}` "
                f"labels (add them: detoxedit judge RUN_DIR --judge {d['other']})."]
    by = {s: sum(1 for it in d["items"] if it["side"] == s) for s in ("vanilla", "edited")}
    return ["", f"Judges `{judge}` and `{d['other']}` disagree on {len(d['items'])} of {d['n']} answers "
            f"(vanilla {by['vanilla']}, edited {by['edited']})"
            + ("; they are listed in report.html, \"Answers the judges disagree on\"." if html_note and d["items"]
               else ".")]


def disagreement_markdown(d: dict | None, judge: str) -> str:
    """The table of answers the two judges disagree on (report.html)."""
    if not d or not d["items"]:
        return ""
    name = {0.0: "safe", 1.0: "unsafe", 0.5: "empty"}
    lines = ["Answers the judges disagree on:", "",
             f"| case | side | input | {judge} | {d['other']} | answer (first 300 characters) |",
             "|---|---|---|---|---|---|"]
    for it in d["items"]:
        lines.append(f"| {_cell(it['case_id'])} | {it['side']} | {it['key']} | {name.get(it['mine'], it['mine'])} | "
                     f"{name.get(it['theirs'], it['theirs'])} | {_cell(it['answer'][:300])} |")
    return "\n".join(lines) + "\n"


def human_summary(run_dir: Path, records: list[dict], judge: str, seed: int = 0) -> dict | None:
    """None when no person labelled an answer of the run; else the judge's agreement with the person's
    labels and the safety tables with the person's label in place of the judge's wherever one was set
    (``detoxedit label``; :mod:`detoxedit.bench.human`)."""
    from detoxedit.bench import human
    from detoxedit.metrics.safety import metric_table

    labels = human.read_human(run_dir)
    if not labels:
        return None
    both = human.with_human(records, judge, labels)
    qs = question_keys(records)
    return {"agreement": human.agreement(records, judge, labels),
            "judge": {s: metric_table(side_labels(records, judge, s), seed=seed, clusters=qs) for s in human.SIDES},
            "with_human": {s: metric_table(side_labels(both, judge, s), seed=seed, clusters=qs)
                           for s in human.SIDES}}


def human_lines(h: dict) -> list[str]:
    """The report's human-label section: how many answers a person read, the judge's agreement, and
    every safety metric by the judge alone and with the person's labels."""
    a = h["agreement"]
    rate = "-" if a["rate"] is None else f"{100 * a['rate']:.1f}%"
    conf = ", ".join(f"{k}: {v}" for k, v in a["confusion"].items() if v)
    lines = ["", f"Human labels: {a['read']} answers read by a person; the judge agrees on {a['agree']} "
             f"({rate}){'; ' + conf if conf else ''}. Metrics by the judge alone and with the person's labels "
             "where set:", "", "| metric | vanilla, judge | vanilla, with human | edited, judge | edited, with human |",
             "|---|---|---|---|---|"]
    for k in METRIC_KEYS:
        lines.append(f"| {k} | {_fmt(h['judge']['vanilla'].get(k))} | {_fmt(h['with_human']['vanilla'].get(k))} | "
                     f"{_fmt(h['judge']['edited'].get(k))} | {_fmt(h['with_human']['edited'].get(k))} |")
    return lines


def write_report(run_dir: str | Path, judge: str | None = None) -> dict[str, Path]:
    run_dir = Path(run_dir)
    cfg, records = load_run(run_dir)
    if not records:
        from detoxedit.errors import DetoxEditError
        raise DetoxEditError(f"{run_dir} has no finished cases yet")
    judge = judge or cfg.get("judge", "default")
    m = compute_metrics(records, judge)
    general_path = run_dir / "general.json"
    if general_path.is_file():  # written by `detoxedit general --out RUN_DIR` (and by the demo)
        m["general"] = json.loads(general_path.read_text())
    m["human"] = human_summary(run_dir, records, judge)
    dis = disagreements(records, judge)
    m["judge_disagreement"] = None if dis is None else {k: v for k, v in dis.items() if k != "items"} | {
        "disagree": len(dis["items"])}
    md = markdown(cfg, m)
    extra = disagreement_lines(dis, judge) + (human_lines(m["human"]) if m["human"] else [])
    if extra:
        md = md.rstrip("\n") + "\n" + "\n".join(extra) + "\n"
    pngs = plots(records, m, run_dir / "plots")
    page = html_page("detoxedit report", md + "\n" + per_case_markdown(records, judge) + "\n"
                     + disagreement_markdown(dis, judge), pngs)
    files = {"metrics": run_dir / "metrics.json", "summary": run_dir / "summary.md", "html": run_dir / "report.html"}
    write_texts({files["metrics"]: json.dumps(m, indent=2), files["summary"]: md, files["html"]: page})
    return files


def html_page(title: str, md: str, pngs: dict[str, Path] | None = None, width: int = 1000,
              extra_css: str = "") -> str:
    """One self-contained HTML page: the Markdown (headings, paragraphs, tables) and the PNGs inlined.

    Shared by the run report, ``detoxedit compare`` and ``detoxedit analyze``.
    """
    imgs = "".join(
        f'<figure><img alt="{k}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for k, p in (pngs or {}).items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + title + "</title><style>"
            f"body{{font-family:system-ui,sans-serif;max-width:{width}px;margin:2em auto;padding:0 1em}}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
            "font-size:13px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}"
            "img{max-width:100%}" + extra_css + "</style></head><body>" + _md_table_to_html(md) + imgs
            + "</body></html>")


def write_texts(texts: dict[Path, str]) -> None:
    """Write each file atomically (``detoxedit.io.atomic_write_text``)."""
    for path, text in texts.items():
        atomic_write_text(path, text)
