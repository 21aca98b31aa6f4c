"""DINM: Detoxifying with Intraoperative Neural Monitoring (Wang et al., ACL 2024, Sec. 3).

One edit, on one case:

1. **Locate** the toxic layer (Sec. 3.1): feed the safe and the unsafe response through the model and
   take the block whose output hidden states differ most, ``l* = argmax_l ||H_l(safe) - H_l(unsafe)||_2``.
2. **Tune** only that block's MLP down-projection ``W`` (Sec. 3.2) with Adam for a few steps on

       L = c_edit * L_e + L_c                                                    (paper Eq. 4)
       L_e = -(1/|Y_safe|) sum_t log p_W(y_t | X + s, y_<t)                     (Eq. 2)
       L_c = (1/|A|) sum_t KL( p_W0(. | K + s, a_<t) || p_W(. | K + s, a_<t) )  (Eq. 3)

   where X is the adversarial input, s the suffix system prompt, Y_safe the safe response, and (K, A)
   a general-knowledge instruction/answer pair. Unlike the reference code, L_c carries gradient.

The model itself is never modified: the tuned matrix is a float32 copy injected into the forward pass,
and the result comes back as an ``Edit`` (a delta) for the caller to apply, save or merge.

**Fast path.** Everything below the edited down-projection is frozen, so the tuning uses the shared
frozen-prefix forward (``machinery.FastForward``): one no-grad pass per edit, then each step replays
only the blocks above l. ``tests/test_dinm.py`` checks it gives the naive path's per-step losses.

Sequences, the batch, the projector, the KL term and the hidden-state capture are shared with the other
methods and live in ``detoxedit/methods/machinery.py``; this file holds DINM's own algorithm.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from detoxedit.errors import DetoxEditError
from detoxedit.methods.base import Edit, EditCase, register_method
from detoxedit.methods.dinm_hparams import DINMHyperParams
from detoxedit.methods.machinery import (EditBatch, FastForward, NaiveForward, Projector, block_outputs,
                                         build_batch, edit_provenance, kl_to_reference, reference_logprobs)
from detoxedit.models import arch


# --------------------------------------------------------------------------------------------------
# 1. Locating the toxic layer
# --------------------------------------------------------------------------------------------------
def locate_toxic_layer(model, tok, safe: str, unsafe: str) -> tuple[int, list[float]]:
    """The toxic layer and the per-layer distances (paper Sec. 3.1).

    Each response is tokenized on its own (with the tokenizer's usual special tokens, as the reference
    does) and run *unpadded*, so no pad position enters the distance. The two sequences are compared
    over their common length n: ``d_l = ||H_l(safe)[:n] - H_l(unsafe)[:n]||_F`` (the reference instead
    pads the shorter one and includes the pad positions' hidden states). Ties go to the lower layer.
    """
    if not safe.strip() or not unsafe.strip():
        raise DetoxEditError("locating the toxic layer needs a non-empty safe and unsafe response")
    a = block_outputs(model, tok(safe)["input_ids"])
    b = block_outputs(model, tok(unsafe)["input_ids"])
    n = min(a[0].shape[0], b[0].shape[0])
    distances = [float(torch.linalg.norm(ha[:n] - hb[:n])) for ha, hb in zip(a, b)]
    layer = max(range(len(distances)), key=lambda i: (distances[i], -i))
    return layer, distances


# --------------------------------------------------------------------------------------------------
# 2. Tuning the down-projection
# --------------------------------------------------------------------------------------------------
def dinm_loss(logits_e: torch.Tensor, targets_e: torch.Tensor, logits_k: torch.Tensor,
              base_logp_k: torch.Tensor, hp: DINMHyperParams) -> tuple[torch.Tensor, float, float]:
    """``L = c_edit * L_e + L_c`` (Eq. 4). Returns (loss, L_e, L_c).

    L_e: mean NLL of the safe-response tokens (Eq. 2). L_c: mean over the answer positions of
    ``KL(p_0 || p_W) = sum_v p_0(v) (log p_0(v) - log p_W(v))`` (Eq. 3, ``kl_to_reference``); with
    ``hp.kl_grad=False`` it is computed without gradient, as the reference code does.
    """
    l_e = F.cross_entropy(logits_e.float(), targets_e.to(logits_e.device))
    with torch.set_grad_enabled(hp.kl_grad and torch.is_grad_enabled()):
        l_c = kl_to_reference(base_logp_k, logits_k)
    return hp.kl_factor * l_e + l_c, l_e.item(), l_c.item()


def tune_down_proj(model, batch: EditBatch, layer: int, hp: DINMHyperParams,
                   fast: bool | None = None) -> tuple[torch.Tensor, list[dict], dict]:
    """Adam on block ``layer``'s down-projection; returns (tuned float32 weight, losses, timings).

    The model's own parameter is not touched. Losses are recorded per step *before* the update, so the
    first entry is the loss of the unedited model.
    """
    fast = hp.fast_path if fast is None else fast
    w0 = arch.down_proj(model, layer).weight
    weight = w0.detach().float().clone().requires_grad_(True)
    project = Projector.down_proj(model, layer, weight)
    t0 = time.perf_counter()
    forward = (FastForward if fast else NaiveForward)(model, batch, layer, project)
    if fast:
        base_k = forward.base_logits[1]
    else:
        with torch.no_grad():
            base_k = forward()[1]
    base_logp_k = reference_logprobs(base_k)  # p_0, the unedited model's answer distribution
    t_prep = time.perf_counter() - t0
    opt = torch.optim.Adam([weight], lr=hp.lr, weight_decay=hp.weight_decay)
    w_orig = w0.detach().float()
    losses: list[dict] = []
    t1 = time.perf_counter()
    for step in range(hp.num_steps):
        opt.zero_grad(set_to_none=True)
        logits_e, logits_k = forward()
        loss, l_e, l_c = dinm_loss(logits_e, batch.edit_targets, logits_k, base_logp_k, hp)
        losses.append({"step": step, "loss": loss.item(), "edit_loss": l_e, "kl_loss": l_c})
        if loss.item() < hp.early_stop_loss:
            break
        loss.backward()
        opt.step()
        if hp.norm_constraint is not None:
            with torch.no_grad():
                weight.copy_(torch.clamp(weight, w_orig - hp.norm_constraint, w_orig + hp.norm_constraint))
    timings = {"prepare_s": t_prep, "train_s": time.perf_counter() - t1}
    return weight.detach(), losses, timings


# --------------------------------------------------------------------------------------------------
# 3. The method
# --------------------------------------------------------------------------------------------------
@register_method("dinm")
class DINM:
    """DINM editor. Holds only the per-run state the reference behaviour needs (the first located layer)."""

    hparams_class = DINMHyperParams

    def __init__(self, hparams: DINMHyperParams | None = None):
        self.hparams = hparams or DINMHyperParams()
        self.hparams.validate()
        self._run_layer: int | None = None

    def reset(self) -> None:
        """Forget the layer located for this run (``locate: once_per_run``)."""
        self._run_layer = None

    def choose_layer(self, model, tok, case: EditCase) -> tuple[int, list[float] | None]:
        hp = self.hparams
        if hp.layers:
            return int(hp.layers[0]), None
        if hp.locate == "once_per_run" and self._run_layer is not None:
            return self._run_layer, None
        if not case.unsafe:
            raise DetoxEditError("DINM needs an unsafe response to locate the toxic layer "
                                 "(give one, fix the layer, or let the caller generate the model's own)")
        layer, distances = locate_toxic_layer(model, tok, case.safe, case.unsafe)
        if hp.locate == "once_per_run":
            self._run_layer = layer
        return layer, distances

    def edit(self, model, tok, case: EditCase) -> Edit:
        hp = self.hparams
        t0 = time.perf_counter()
        layer, distances = self.choose_layer(model, tok, case)
        t_locate = time.perf_counter() - t0
        arch.down_proj(model, layer)  # range check with a clear message
        batch = build_batch(tok, case, hp)
        weight, losses, timings = tune_down_proj(model, batch, layer, hp)
        name = arch.down_proj_param_name(model, layer)
        w0 = arch.down_proj(model, layer).weight
        delta = weight.to(w0.dtype).float() - w0.detach().float()
        timings = {"locate_s": t_locate, **timings, "total_s": time.perf_counter() - t0}
        meta = {
            "method": "dinm", "case_id": case.case_id, "layer": layer, "param": name,
            "distances": distances, "losses": losses, "steps_run": len(losses),
            "early_stopped": len(losses) < hp.num_steps, "timings": timings,
            **edit_provenance(model, hp, {name: w0}),
        }
        return Edit(method="dinm", deltas={name: delta.cpu()}, meta=meta)
