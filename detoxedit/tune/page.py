"""The tuning page: ``DIR/tune.md`` and ``DIR/tune.html`` (the trial table, the best settings, the Pareto
plots of DS / DG-Avg against over-refusal and KQA drop)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detoxedit.config import RunConfig
from detoxedit.tune import space as sp
from detoxedit.tune.objective import Targets, pareto_front, unchecked


def _num(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _change(c: dict | None, n_all: int | None = None) -> str:
    """A paired change with its CI, e.g. ``+4.6 [-3, 12]``, and its case count when fewer than ``n_all``
    (a pruned trial)."""
    if not c:
        return "-"
    ci = f" [{c['low']:.0f}, {c['high']:.0f}]" if None not in (c.get("low"), c.get("high")) else ""
    return f"{c['value']:+.1f}{ci}" + (f" ({c['n']} cases)" if n_all is not None and c["n"] < n_all else "")


def _setting(over: dict[str, Any]) -> str:
    """A trial's overrides for a Markdown cell."""
    return sp.format_overrides(over).replace("|", "/") or "-"


def markdown(cfg: RunConfig, targets: Targets, opts, space: list, n_layers: int, rows: list[dict],
             summary: dict) -> str:
    from detoxedit.judges.accuracy import accuracy_line

    done = [r for r in rows if r["metrics"]]
    secs = sum(r["seconds"] or 0 for r in rows)
    lines = [f"# detoxedit tune: {cfg.method} on {cfg.model}", "",
             f"data `{cfg.data}` split `{cfg.split}`, {done[0]['metrics']['n_cases'] if done else '?'} cases per "
             f"trial; judge `{cfg.judge}`; {cfg.max_new_tokens or 'method default'} new tokens; "
             f"{len(rows)} of {opts.trials} trials ({sum(r['state'] == 'pruned' for r in rows)} pruned, "
             f"{sum(r['state'] == 'fail' for r in rows)} failed), {secs / 60:.1f} min of trial time.",
             accuracy_line(cfg.judge), "",
             f"Objective: maximise {targets.objective} of the edited model subject to DS >= {targets.min_ds}, "
             f"over-refusal <= {targets.max_overrefusal}, KQA drop <= {targets.max_kqa_drop} points, fluency drop "
             f"<= {targets.max_fluency_drop}, answers cut by the token limit +{targets.max_cut_increase} points at "
             f"most, failed edits <= {targets.max_failed_edits}% (None: not checked)."]
    missing = unchecked([r["metrics"] for r in done], targets)
    if missing:
        lines.append(f"Not measured in any trial, so not checked: {', '.join(missing)}.")
    lines += ["", "Search space:", ""] + [f"- {t}" for t in sp.describe(space, n_layers)]
    best, base = summary.get("best"), summary.get("baseline")
    if best:
        verdict = "meets every bound" if not best["missed"] else "no trial met every bound; the closest is shown"
        lines += ["", f"**Best: trial {best['number']}** ({verdict}): {_setting(best['overrides'])}. Settings: "
                  "`best.yaml` (`detoxedit bench --method-config best.yaml`)."]
        if base and base["number"] != best["number"]:
            lines.append(f"Starting settings (trial {base['number']}): {targets.objective} "
                         f"{_num(base['metrics'].get(targets.objective))}, DS {_num(base['metrics'].get('DS'))}, "
                         f"over-refusal {_num(base['metrics'].get('overrefusal'))}"
                         + ("" if not base["missed"] else f"; misses {', '.join(sorted(base['missed']))}") + ".")
            c = best.get("change")
            if c:
                lines.append(f"Its change in {targets.objective} from the starting settings: {_change(c)} (paired "
                             f"over the {c['n']} cases both ran)" + (
                                 "; the starting settings miss a bound." if base["missed"] else
                                 f". It was picked as the best of {len(rows)} trials on these very cases, so this "
                                 "lead overstates what cases the study did not rank on will show (the winner's "
                                 "curse): confirm it there before you ship it (the same command with "
                                 "`--confirm-per-category N`)." if c["value"] > 0 else "."))
            k = summary.get("confirmation")
            if k:
                lines.append(f"**On {k['change']['n']} cases of questions the study did not ask** (`{k['dirs'][0]}`, "
                             f"`{k['dirs'][1]}`): {targets.objective} {_num(k['start'])} with the starting settings, "
                             f"{_num(k['best'])} with trial {best['number']}: change {_change(k['change'])}, "
                             "paired over these cases.")
    lines += ["", "Trials, best first (DS and DG-Avg: edited model, 95% bootstrap CI over cases, or over their "
              "questions where cases share one; drops: vanilla - "
              "edited; cut: change in % of answers that ran to the token limit; read: answers a person labelled, whose "
              "labels replace the judge's; vs start: the change in "
              f"{targets.objective} from the starting settings, paired over the cases both ran):", "",
              "| trial | state | settings | DS | DG-Avg | vs start | over-refusal | KQA drop | fluency drop | cut "
              "| failed edits | misses | read | s/case | run |", "|" + "---|" * 15]
    n_all = max((r["metrics"]["n_cases"] for r in done), default=None)
    for r in rows:
        m = r["metrics"] or {}
        ci = m.get("ci", {})

        def cell(k):
            v = m.get(k)
            if v is None:
                return "-"
            c = ci.get(k)
            return f"{v:.1f}" + (f" [{c[0]:.0f}, {c[1]:.0f}]" if c and None not in c else "")
        state = r["state"] + (" (start)" if r["baseline"] else " (--try)" if r.get("tried") else "")
        misses = ", ".join(sorted(r["missed"])) if r["missed"] else ("-" if m else "")
        if r["pruned"]:
            misses = (misses + "; " if misses and misses != "-" else "") + "pruned: " + r["pruned"]
        if r["error"]:
            misses = "error: " + r["error"]
        lines.append(f"| {r['number']} | {state} | {_setting(r['overrides'])} | {cell('DS')} | {cell('DG-Avg')} | "
                     f"{_change(r.get('change'), n_all)} | "
                     f"{_num(m.get('overrefusal'))} | {_num(m.get('kqa_drop'))} | {_num(m.get('fluency_drop'), 2)} | "
                     f"{_num(m.get('cut_increase'))} | {m.get('failed_edits', '-')} | {misses.replace('|', '/')} | "
                     f"{m.get('human_read', 0) if m else '-'} | {_num(m.get('seconds_per_case'))} | {r['run_dir'] or '-'} |")
    if done:
        m0 = done[0]["metrics"]
        lines += ["", f"Vanilla model on these cases: DS {_num(m0.get('DS_vanilla'))}, DG-Avg "
                  f"{_num(m0.get('DG-Avg_vanilla'))}, over-refusal {_num(m0.get('overrefusal_vanilla'))}."]
    return "\n".join(lines) + "\n"


def pareto_plot(rows: list[dict], targets: Targets, path: Path) -> Path | None:
    """DG-Avg and DS against over-refusal, and DG-Avg against KQA drop; feasible trials filled, infeasible
    hollow, pruned as crosses, the starting settings as a star, the best ringed, the Pareto front joined."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["metrics"] and r["state"] in ("complete", "pruned")]
    if not pts:
        return None
    panels = [("overrefusal", targets.objective, "over-refusal (%)"), ("overrefusal", "DS", "over-refusal (%)"),
              ("kqa_drop", targets.objective, "KQA drop (points)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    best = rows[0]["number"] if rows and rows[0]["state"] == "complete" else None
    for ax, (xk, yk, xlabel) in zip(axes, panels):
        have = [r for r in pts if r["metrics"].get(xk) is not None and r["metrics"].get(yk) is not None]
        for r in have:
            x, y = r["metrics"][xk], r["metrics"][yk]
            if r["state"] == "pruned":
                ax.scatter(x, y, marker="x", color="#999999")
            else:
                ax.scatter(x, y, s=40, color="#2a7ab9" if not r["missed"] else "white", edgecolors="#2a7ab9")
            if r["baseline"]:
                ax.scatter(x, y, marker="*", s=160, color="#e08a00", zorder=3)
            if r["number"] == best:
                ax.scatter(x, y, s=220, facecolors="none", edgecolors="#c0392b", linewidths=2, zorder=4)
            ax.annotate(str(r["number"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        complete = [r for r in have if r["state"] == "complete"]
        front = sorted((complete[i] for i in pareto_front([(r["metrics"][yk], r["metrics"][xk]) for r in complete])),
                       key=lambda r: r["metrics"][xk])
        if len(front) > 1:
            ax.plot([r["metrics"][xk] for r in front], [r["metrics"][yk] for r in front], color="#2a7ab9", lw=1)
        bound = targets.max_overrefusal if xk == "overrefusal" else targets.max_kqa_drop
        if bound is not None:
            ax.axvline(bound, color="#c0392b", ls="--", lw=0.8)
        vanilla = next((r["metrics"].get(f"{yk}_vanilla") for r in pts if r["metrics"].get(f"{yk}_vanilla") is not None), None)
        if vanilla is not None:
            ax.axhline(vanilla, color="#999999", ls=":", lw=1)
            ax.annotate("vanilla", (0, vanilla), xycoords=("axes fraction", "data"), fontsize=7, color="#777777",
                        xytext=(2, 2), textcoords="offset points")
        if yk == "DS" and targets.min_ds is not None:
            ax.axhline(targets.min_ds, color="#c0392b", ls="--", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{yk} (edited)")
        if not have:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    fig.suptitle("Trials (filled: meets the bounds; hollow: misses one; x: pruned; star: starting settings; "
                 "ring: best; line: Pareto front; dotted: vanilla)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_page(out: Path, cfg: RunConfig, targets: Targets, opts, space: list, n_layers: int, rows: list[dict],
               summary: dict) -> None:
    from detoxedit.bench.report import html_page, write_texts

    md = markdown(cfg, targets, opts, space, n_layers, rows, summary)
    png = pareto_plot(rows, targets, out / "plots" / "pareto.png")
    write_texts({out / "tune.md": md,
                 out / "tune.html": html_page("detoxedit tune", md, {"pareto": png} if png else None, width=1300)})
