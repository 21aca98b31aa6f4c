"""Activation shift: how a method moves the input of the toxic layer's down-projection (paper Sec. 6).

For every test adversarial input we record ``a``, the ``d_ff``-dimensional input to the toxic layer's
down-projection (the coefficients of its value vectors), at one token position: by default the *last
prompt token*, the position whose output is the response's first token (``pool="mean"`` averages over
the prompt instead). With ``A`` the unedited model's activations and ``A'`` the edited model's,

    shift  delta = mean(A') - mean(A)           relative shift = ||delta|| / ||mean(A)||

and, as the paper plots it, every input's activation projected onto the unit shift ``delta/||delta||``
and onto the first principal component of ``A`` and ``A'`` pooled.

What the toxic layer writes along the probe direction ``w`` splits into a parameter part and an
activation part: with ``c(W, a) = w . (W a)`` (averaged over inputs),

    c(W', A') - c(W, A) = [c(W', A) - c(W, A)] + [c(W', A') - c(W', A)]
                          parameter change        activation change (with the new weights)

**A fact to keep in mind**: an edit of block ``l``'s down-projection alone cannot change that same
down-projection's input on a fixed prompt (everything before it in the forward pass is unchanged), so
DINM's shift measured at its own edited layer is exactly zero by construction; SFT/DPO change the
layers below and can shift it. The analysis therefore measures every method at one common layer.
"""

from __future__ import annotations

from typing import Sequence

import torch

from detoxedit.models import arch
from detoxedit.models.generate import pad_id, truncate_left
from detoxedit.models.hooks import capture_inputs


@torch.no_grad()
def down_proj_inputs(model, tok, prompts: Sequence[str], layer: int, prompt_format: str = "chat",
                     pool: str = "last", max_length: int = 1024, batch_size: int = 8,
                     system_prompt: str | None = None) -> torch.Tensor:
    """``[N, d_ff]``: input of block ``layer``'s down-projection for each prompt (formatted for chat,
    with ``system_prompt`` as the system message when given)."""
    if pool not in ("last", "mean"):
        raise ValueError(f"pool must be 'last' or 'mean', not {pool!r}")
    module = arch.down_proj(model, layer)
    device = next(model.parameters()).device
    encoded = [truncate_left(tok, p, max_length, prompt_format, system_prompt) for p in prompts]
    pid = pad_id(tok)
    out: torch.Tensor | None = None
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        width = max(len(e) for e in chunk)
        ids = torch.full((len(chunk), width), pid, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, e in enumerate(chunk):  # right padding: real tokens keep their positions
            ids[row, : len(e)] = torch.tensor(e)
            mask[row, : len(e)] = 1
        with capture_inputs([module]) as store:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        x = store[0].float().cpu()
        if pool == "last":
            pooled = x[torch.arange(len(chunk)), mask.sum(1) - 1]
        else:
            m = mask.unsqueeze(-1).float()
            pooled = (x * m).sum(1) / m.sum(1)
        if out is None:
            out = torch.zeros(len(encoded), pooled.shape[1])
        out[start:start + len(chunk)] = pooled
    return out if out is not None else torch.zeros(0, 0)


def first_principal_component(x: torch.Tensor) -> torch.Tensor:
    """Unit vector of largest variance of the rows of ``x`` (its sign is SVD's, i.e. arbitrary)."""
    xc = x.double() - x.double().mean(0)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    return vh[0].float()


def shift_stats(before: torch.Tensor, after: torch.Tensor) -> dict:
    """Mean activations, the shift, its size, and per-input projections for the paper's plot."""
    mb, ma = before.double().mean(0), after.double().mean(0)
    delta = ma - mb
    dn = float(delta.norm())
    u = delta / dn if dn > 0 else torch.zeros_like(delta)
    pc1 = first_principal_component(torch.cat([before, after])).double()
    return {
        "n_inputs": int(before.shape[0]),
        "shift_norm": dn,
        "mean_before_norm": float(mb.norm()),
        "relative_shift": dn / float(mb.norm()) if float(mb.norm()) > 0 else None,
        "cos_shift_pc1": float(u @ pc1) if dn > 0 else None,
        "proj_shift_before": (before.double() @ u).tolist(),
        "proj_shift_after": (after.double() @ u).tolist(),
        "proj_pc1_before": (before.double() @ pc1).tolist(),
        "proj_pc1_after": (after.double() @ pc1).tolist(),
        "shift": delta.float(),
    }


def toxic_contribution(w_value_before: torch.Tensor, w_value_after: torch.Tensor, a_before: torch.Tensor,
                       a_after: torch.Tensor, direction: torch.Tensor) -> dict:
    """Mean ``w . (sum_i a_i v_i)`` for the four (weights, activations) pairings; see the module docstring.

    ``w_value_*`` are ``[d_ff, d_model]`` value-vector matrices (``toxicity.value_vectors``).
    """
    w = direction.double()
    tb, ta = w_value_before.double() @ w, w_value_after.double() @ w   # [d_ff]: w . v_i
    c = {
        "before": float((a_before.double() @ tb).mean()),
        "params_only": float((a_before.double() @ ta).mean()),
        "after": float((a_after.double() @ ta).mean()),
    }
    c["parameter_part"] = c["params_only"] - c["before"]
    c["activation_part"] = c["after"] - c["params_only"]
    return c
