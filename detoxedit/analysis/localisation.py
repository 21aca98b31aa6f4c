"""Localisation study: per-layer distance curves over many cases, and a scale-aware alternative.

DINM's locator (paper Sec. 3.1, ``detoxedit.methods.dinm.locate_toxic_layer``) picks the block whose
outputs differ most between the safe and the unsafe response,

    raw:       d_l = ||H_l(safe)[:n] - H_l(unsafe)[:n]||_F .

Hidden-state norms grow with depth in pre-norm transformers (every block *adds* to the residual stream),
so ``d_l`` favours late layers whatever the content. The scale-aware alternative divides by the size of
the states being compared:

    relative:  r_l = (1/n) sum_t ||h_lt(safe) - h_lt(unsafe)|| / ( (||h_lt(safe)|| + ||h_lt(unsafe)||) / 2 ),

each position's distance in units of that position's own scale, averaged over positions (``r_l`` is
unchanged if a layer's outputs are multiplied by a constant). Per position, not per sequence, because
of *massive activations*: from some depth on (layer 11 in SmolLM2-135M) the first token's state has a
norm ~100x the others'; it is nearly identical in both sequences, so it adds little to ``d_l`` but
would swamp a sequence-level norm. Both distances use the locator's tokenisation and common-length cut.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch

from detoxedit.methods.machinery import block_outputs

DISTANCES = ("raw", "relative")


def argmax_layer(curve: Sequence[float]) -> int:
    """The locator's rule: the largest value, ties to the lower layer."""
    return max(range(len(curve)), key=lambda i: (curve[i], -i))


@torch.no_grad()
def distance_curves(model, tok, safe: str, unsafe: str) -> dict[str, list[float]]:
    """``{"raw": [d_l], "relative": [r_l], "norm": [median state norm over positions]}`` per block."""
    a = block_outputs(model, tok(safe)["input_ids"])
    b = block_outputs(model, tok(unsafe)["input_ids"])
    n = min(a[0].shape[0], b[0].shape[0])
    raw, rel, norms = [], [], []
    for ha, hb in zip(a, b):
        ha, hb = ha[:n].double(), hb[:n].double()
        raw.append(float(torch.linalg.norm(ha - hb)))
        scale = 0.5 * (ha.norm(dim=1) + hb.norm(dim=1))                       # [n]
        per_pos = (ha - hb).norm(dim=1) / scale.clamp_min(1e-30)
        rel.append(float(per_pos.mean()))
        norms.append(float(scale.median()))
    return {"raw": raw, "relative": rel, "norm": norms}


def localisation_study(model, tok, cases: Sequence[tuple[str, str, str]], progress: bool = False) -> dict:
    """Curves and chosen layers for ``cases`` = ``[(case_id, safe, unsafe)]``.

    Returns per-case curves, the layer each distance picks, their histograms, the share of cases on
    which both pick the same layer, and each curve averaged over cases after scaling it to max 1.
    """
    items = cases
    if progress:
        from tqdm import tqdm
        items = tqdm(cases, desc="localisation", unit="case")
    per_case = []
    for cid, safe, unsafe in items:
        if not (safe or "").strip() or not (unsafe or "").strip():
            continue
        curves = distance_curves(model, tok, safe, unsafe)
        per_case.append({"case_id": str(cid), **curves,
                         "layer_raw": argmax_layer(curves["raw"]),
                         "layer_relative": argmax_layer(curves["relative"])})
    out: dict = {"n_cases": len(per_case), "cases": per_case}
    if not per_case:
        return out
    n_layers = len(per_case[0]["raw"])
    for kind in DISTANCES:
        chosen = Counter(c[f"layer_{kind}"] for c in per_case)
        out[f"layers_{kind}"] = {str(k): chosen[k] for k in sorted(chosen)}
        out[f"mode_{kind}"] = max(chosen, key=lambda k: (chosen[k], -k))
        out[f"mean_curve_{kind}"] = [
            sum(c[kind][l] / (max(c[kind]) or 1.0) for c in per_case) / len(per_case) for l in range(n_layers)]
    out["mean_norm"] = [sum(c["norm"][l] for c in per_case) / len(per_case) for l in range(n_layers)]
    out["agreement"] = sum(c["layer_raw"] == c["layer_relative"] for c in per_case) / len(per_case)
    return out


def layer_sweep(runs: Sequence[dict]) -> list[dict]:
    """Rows ``{layer, run, n_cases, DS, DG-Avg, ...}`` for DINM runs with a fixed layer (``layers=[N]``),
    and for located DINM runs whose cases all edited the same layer (``located: True``).

    ``runs`` are analysis run summaries (``analyze.RunInfo.summary()``) that carry ``metrics``.
    """
    rows = []
    for r in runs:
        if r.get("method") != "dinm":
            continue
        layers = (r.get("hparams") or {}).get("layers") or []
        located = sorted(r.get("edited_layers") or {})
        if not layers and len(located) == 1:  # a located run whose cases all edited one layer: a row too
            layers = [int(located[0])]
        if not layers:
            continue
        m = r.get("metrics") or {}
        row = {"layer": int(layers[0]), "run": r["run_dir"], "n_cases": m.get("n_cases"),
               "located": not (r.get("hparams") or {}).get("layers")}
        for side in ("vanilla", "edited"):
            for key in ("DS", "DG-Avg"):
                row[f"{key} {side}"] = ((m.get(side) or {}).get(key) or {}).get("value")
        rows.append(row)
    return sorted(rows, key=lambda r: r["layer"])
