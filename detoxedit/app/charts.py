"""The app's figures, drawn with matplotlib's object API (``Figure``, no pyplot state, no GUI backend).

Each function returns a ``matplotlib.figure.Figure``, or None when the edit or the comparison has
nothing to draw (the page then shows an empty plot); Gradio's ``gr.Plot`` renders a figure as an image.
"""

from __future__ import annotations

import math

EDITED, VANILLA, MARK = "#2a7ab9", "#999999", "#c0392b"


def _figure(width: float = 6.0, height: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="tight")
    return fig, fig.add_subplot()


def layer_scores(meta: dict) -> tuple[list[float], str, str] | None:
    """``(one score per layer, y-axis label, title)`` that chose the edited layer: DINM's hidden-state
    distances (the rule it used), or FT-L's causal-trace effects; None when the layer was fixed."""
    rule = meta.get("distance") or "euclidean"
    if meta.get("distances"):
        scores = meta["distances_normalized"] if rule == "normalized" and meta.get("distances_normalized") \
            else meta["distances"]
        ylabel = "||H(safe) - H(unsafe)||" + (" (normalized)" if rule == "normalized" else "")
        return [float(x) for x in scores], ylabel, f"Toxic layer {meta.get('layer')}: per-layer distance"
    trace = meta.get("trace")
    if trace and trace.get("effects"):
        return ([float(x) for x in trace["effects"]], "indirect effect (nats)",
                f"Layer {meta.get('layer')}: causal trace")
    return None


def distance_figure(meta: dict):
    """Bars of the per-layer score that located the edited layer, the chosen layer in red."""
    found = layer_scores(meta)
    if found is None:
        return None
    scores, ylabel, title = found
    fig, ax = _figure()
    chosen = meta.get("layer")
    colors = [MARK if i == chosen else EDITED for i in range(len(scores))]
    ax.bar(range(len(scores)), scores, 0.8, color=colors)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(scores) <= 40:
        ax.set_xticks(range(len(scores)))
        ax.tick_params(axis="x", labelsize=7)
    return fig


def loss_series(meta: dict, kl_factor: float | None = None) -> dict[str, list[tuple[int, float]]]:
    """The per-step losses of an edit as named series of ``(step, value)``: ``loss``, and for DINM
    ``c * L_edit`` and ``L_kl`` (L = c * L_edit + L_kl)."""
    rows = meta.get("losses") or []
    out: dict[str, list[tuple[int, float]]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or row.get("loss") is None:
            continue
        step = int(row.get("step", i))
        out.setdefault("loss", []).append((step, float(row["loss"])))
        if kl_factor is not None and row.get("edit_loss") is not None:
            out.setdefault("c * L_edit", []).append((step, kl_factor * float(row["edit_loss"])))
        if row.get("kl_loss") is not None:
            out.setdefault("L_kl", []).append((step, float(row["kl_loss"])))
    return out


def loss_figure(meta: dict, kl_factor: float | None = None):
    """The loss curve of the edit (the step size kept, when DINM tried several)."""
    series = loss_series(meta, kl_factor)
    if not series:
        return None
    fig, ax = _figure()
    styles = {"loss": ("-", EDITED), "c * L_edit": ("--", "#e67e22"), "L_kl": (":", "#27ae60")}
    for name, points in series.items():
        ls, color = styles.get(name, ("-", None))
        ax.plot([s for s, _ in points], [v for _, v in points], ls, marker="o", ms=3, color=color, label=name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    lr = meta.get("lr")
    ax.set_title("Loss per step" + (f" (step size {lr:.3g})" if isinstance(lr, (int, float)) else ""))
    ax.legend(loc="upper right", fontsize=8)
    return fig


def compare_figure(result: dict, metrics: tuple[str, ...] | None = None):
    """Grouped bars: each row of ``detoxedit.bench.compare.compare_runs`` (vanilla first) on each safety
    metric, with its 95% CI."""
    from detoxedit.metrics.safety import METRIC_KEYS

    metrics = tuple(metrics or METRIC_KEYS)
    rows = result.get("rows") or []
    present = [k for k in metrics if any((r["metrics"].get(k) or {}).get("value") is not None for r in rows)]
    if not rows or not present:
        return None
    fig, ax = _figure(max(6.0, 1.2 * len(present) + 2), 3.6)
    width = 0.8 / len(rows)
    palette = [VANILLA, EDITED, "#e67e22", "#27ae60", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d"]
    for j, row in enumerate(rows):
        xs, vals, lo, hi = [], [], [], []
        for i, k in enumerate(present):
            cell = row["metrics"].get(k) or {}
            v = cell.get("value")
            if row.get("uses_instance") is False and k == "DS":
                v = None  # not a defense success in the paper's sense (compare's footnote †)
            xs.append(i - 0.4 + width * (j + 0.5))
            vals.append(math.nan if v is None else v)
            lo.append(0 if v is None or cell.get("ci_low") is None else v - cell["ci_low"])
            hi.append(0 if v is None or cell.get("ci_high") is None else cell["ci_high"] - v)
        bars = ax.bar(xs, vals, width, yerr=[lo, hi], capsize=2, label=row["label"], color=palette[j % len(palette)])
        if len(rows) <= 4:  # the value on each bar (a 0 has no bar to see)
            ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.0f}" for v in vals], fontsize=7, padding=1)
    ax.set_xticks(range(len(present)), present)
    ax.set_ylim(0, 105)
    ax.set_ylabel("safety (higher is safer)")
    ax.set_title(f"Judge {result.get('judge')}: vanilla and each run's edited side")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig
