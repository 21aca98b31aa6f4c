"""Parameter toxicity: how much the toxic layer's value vectors point along the probe direction.

An MLP writes ``W_down a = sum_i a_i v_i`` into the residual stream: each *value vector* ``v_i`` (a
column of the ``[d_model, d_ff]`` down-projection, a row of GPT-2's ``[d_ff, d_model]`` Conv1D weight)
is added with coefficient ``a_i`` (Geva et al. 2022; Lee et al. 2024, Sec. 3.2). The paper (Sec. 6)
measures the toxicity of the layer's parameters as the mean cosine similarity between the probe
direction ``w`` and the value vectors,

    T(W) = (1/d_ff) sum_i cos(w, v_i),

before and after a method, and reports the change ``100 * (T(W') - T(W)) / |T(W)|`` in percent. Because
the mean over all ``d_ff`` vectors is close to zero (signs cancel), we also track the ``k`` most toxic
value vectors *of the unedited layer* (largest ``cos(w, v_i)``, as Lee et al. track ``MLP.v_770^19``
and its like) and report the same numbers on them.
"""

from __future__ import annotations

import torch

from detoxedit.errors import DetoxEditError


def value_vectors(weight: torch.Tensor, layout: str = "linear") -> torch.Tensor:
    """``[d_ff, d_model]``: one value vector per row, whatever the module's weight layout."""
    if layout == "linear":  # nn.Linear(d_ff -> d_model): weight [d_model, d_ff], value vectors = columns
        return weight.detach().float().t()
    if layout == "conv1d":  # GPT-2 Conv1D: weight [d_ff, d_model], value vectors = rows
        return weight.detach().float()
    raise DetoxEditError(f"unknown down-projection layout {layout!r} (expected 'linear' or 'conv1d')")


def value_cosines(weight: torch.Tensor, direction: torch.Tensor, layout: str = "linear") -> torch.Tensor:
    """``[d_ff]``: ``cos(w, v_i)`` for every value vector (a zero vector has cosine 0)."""
    v = value_vectors(weight, layout).double()
    w = direction.double().to(v.device)
    if v.shape[1] != w.shape[0]:
        raise DetoxEditError(f"probe direction has {w.shape[0]} dims, the value vectors {v.shape[1]} "
                             "(a probe trained on another model?)")
    norms = v.norm(dim=1) * w.norm()
    return torch.where(norms > 0, (v @ w) / norms.clamp_min(1e-30), torch.zeros_like(norms)).float()


def percent_change(before: float, after: float) -> float | None:
    """``100 * (after - before) / |before|`` (None when ``before`` is 0)."""
    return None if before == 0 else 100.0 * (after - before) / abs(before)


def parameter_toxicity(w_before: torch.Tensor, w_after: torch.Tensor, direction: torch.Tensor,
                       layout: str = "linear", k: int = 10) -> dict:
    """Mean cosine over all value vectors and over the top-``k`` toxic ones, before/after, and % change.

    The top-``k`` set is chosen on ``w_before`` and kept fixed, so "after" measures the same vectors.
    """
    cb = value_cosines(w_before, direction, layout)
    ca = value_cosines(w_after, direction, layout)
    k = max(1, min(k, cb.numel()))
    top = torch.topk(cb, k).indices
    mean_b, mean_a = float(cb.mean()), float(ca.mean())
    top_b, top_a = float(cb[top].mean()), float(ca[top].mean())
    return {
        "mean_cos_before": mean_b, "mean_cos_after": mean_a, "mean_change_pct": percent_change(mean_b, mean_a),
        "topk": k, "topk_indices": [int(i) for i in top],
        "topk_cos_before": top_b, "topk_cos_after": top_a, "topk_change_pct": percent_change(top_b, top_a),
        "max_cos_before": float(cb.max()), "max_cos_after": float(ca.max()),
        "n_value_vectors": int(cb.numel()),
    }


def average_toxicity(per_case: list[dict]) -> dict:
    """Mean of each number over cases (per-instance methods: each case's edited layer)."""
    if not per_case:
        return {}
    keys = ("mean_cos_before", "mean_cos_after", "topk_cos_before", "topk_cos_after",
            "max_cos_before", "max_cos_after")
    out = {key: sum(c[key] for c in per_case) / len(per_case) for key in keys}
    out["mean_change_pct"] = percent_change(out["mean_cos_before"], out["mean_cos_after"])
    out["topk_change_pct"] = percent_change(out["topk_cos_before"], out["topk_cos_after"])
    changes = [c["topk_change_pct"] for c in per_case if c["topk_change_pct"] is not None]
    out["topk_change_pct_per_case_mean"] = sum(changes) / len(changes) if changes else None
    out["topk"] = per_case[0]["topk"]
    out["n_value_vectors"] = per_case[0]["n_value_vectors"]
    out["n_cases"] = len(per_case)
    return out
