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

**Fast path.** Everything below the edited down-projection is frozen, so one no-grad forward pass per
edit records (a) the down-projection's input ``x``, (b) the rest of block l's output,
``r = h_l - post(W0 x)`` (``post`` is identity, or Gemma's post-feed-forward norm), and (c) the exact
arguments (attention masks, rotary embeddings) each higher block was called with. A step then computes
``h_l = r + post(W x)``, replays only the blocks above l, and projects to the vocabulary only at the
positions the loss reads. ``tests/test_dinm.py`` checks it gives the naive path's per-step losses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from detoxedit.errors import DetoxEditError
from detoxedit.methods.base import Edit, EditCase, param_fingerprint, register_method
from detoxedit.methods.dinm_hparams import DINMHyperParams
from detoxedit.models import arch
from detoxedit.models.generate import pad_id, response_ids, truncate_left, with_suffix
from detoxedit.models.hooks import (capture_calls, capture_inputs, capture_outputs, first_tensor,
                                    replace_output)

DEFAULT_KNOWLEDGE = (
    "What is the capital of France?",
    "The capital of France is Paris.",
)
"""Knowledge-constraint pair used when a case has none (a harmless instruction with a known answer)."""


# --------------------------------------------------------------------------------------------------
# 1. Locating the toxic layer
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def block_outputs(model, input_ids: list[int]) -> list[torch.Tensor]:
    """Hidden states leaving every decoder block for one unpadded sequence: ``[n_layers] x [T, d]``."""
    blocks = arch.blocks(model)
    device = next(model.parameters()).device
    with capture_outputs(list(blocks)) as outs:
        model(input_ids=torch.tensor([input_ids], device=device), use_cache=False)
    return [o[0].float() for o in outs]


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
# 2. The training batch
# --------------------------------------------------------------------------------------------------
@dataclass
class DINMBatch:
    """Row 0: adversarial input + suffix, then the safe response. Row 1: knowledge prompt + suffix, then
    its answer. Right-padded, so every real position keeps its position id."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    edit_positions: torch.Tensor
    """Positions in row 0 whose next-token distribution predicts a safe-response token."""
    edit_targets: torch.Tensor
    kl_positions: torch.Tensor
    """Positions in row 1 whose next-token distribution predicts a knowledge-answer token."""


def _sequence(tok, prompt: str, response: str, hp: DINMHyperParams) -> tuple[list[int], int]:
    r_ids = response_ids(tok, response, hp.prompt_format)
    r_ids = r_ids[: max(1, hp.max_length // 2)] if len(r_ids) > hp.max_length - 16 else r_ids
    p_ids = truncate_left(tok, with_suffix(prompt, hp.suffix_system_prompt),
                          hp.max_length - len(r_ids), hp.prompt_format)
    return p_ids + r_ids, len(p_ids)


def build_batch(tok, case: EditCase, hp: DINMHyperParams) -> DINMBatch:
    k_prompt = case.knowledge_prompt or DEFAULT_KNOWLEDGE[0]
    k_answer = case.knowledge_answer or DEFAULT_KNOWLEDGE[1]
    seq_e, pe = _sequence(tok, case.prompt, case.safe, hp)
    seq_k, pk = _sequence(tok, k_prompt, k_answer, hp)
    width = max(len(seq_e), len(seq_k))
    ids = torch.full((2, width), pad_id(tok), dtype=torch.long)
    mask = torch.zeros((2, width), dtype=torch.long)
    for row, seq in enumerate((seq_e, seq_k)):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return DINMBatch(
        input_ids=ids, attention_mask=mask,
        edit_positions=torch.arange(pe - 1, len(seq_e) - 1),
        edit_targets=torch.tensor(seq_e[pe:]),
        kl_positions=torch.arange(pk - 1, len(seq_k) - 1),
    )


# --------------------------------------------------------------------------------------------------
# 3. Forward passes with a tuned down-projection
# --------------------------------------------------------------------------------------------------
class _Projector:
    """``x -> W x + b`` with the tuned float32 copy ``W`` cast to the model's dtype (both layouts)."""

    def __init__(self, module, weight: torch.Tensor, layout: str):
        self.bias = getattr(module, "bias", None)
        self.weight, self.layout = weight, layout

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        if self.layout == "conv1d":  # GPT-2's Conv1D keeps the weight as [in, out]
            y = x @ w
            return y + self.bias if self.bias is not None else y
        return F.linear(x, w, self.bias)


def _select(hidden_or_logits: torch.Tensor, batch: DINMBatch) -> tuple[torch.Tensor, torch.Tensor]:
    dev = hidden_or_logits.device
    return (hidden_or_logits[0, batch.edit_positions.to(dev)],
            hidden_or_logits[1, batch.kl_positions.to(dev)])


def _softcap(model, logits: torch.Tensor) -> torch.Tensor:
    cap = arch.logit_softcap(model)
    return torch.tanh(logits / cap) * cap if cap else logits


class NaiveForward:
    """The whole model, every step, with the down-projection's output replaced by the tuned one."""

    def __init__(self, model, batch: DINMBatch, layer: int, project: _Projector):
        self.model, self.batch, self.project = model, batch, project
        self.module = arch.down_proj(model, layer)
        dev = next(model.parameters()).device
        self.ids, self.mask = batch.input_ids.to(dev), batch.attention_mask.to(dev)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        with replace_output(self.module, self.project):
            logits = self.model(input_ids=self.ids, attention_mask=self.mask, use_cache=False).logits
        return _select(logits, self.batch)


class FastForward:
    """Replays only what depends on the tuned matrix (see the module docstring)."""

    def __init__(self, model, batch: DINMBatch, layer: int, project: _Projector):
        self.model, self.batch, self.project = model, batch, project
        blocks = arch.blocks(model)
        self.above = list(blocks)[layer + 1:]
        module = arch.down_proj(model, layer)
        self.post = arch.mlp_out_norm(model, layer)
        self.final_norm, self.lm_head = arch.final_norm(model), arch.lm_head(model)
        dev = next(model.parameters()).device
        with torch.no_grad(), capture_calls(self.above) as calls, capture_inputs([module]) as xin, \
                capture_outputs([module, blocks[layer]]) as outs:
            out = model(input_ids=batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev),
                        use_cache=False)
        self.base_logits = _select(out.logits, batch)
        self.calls = calls
        self.x = xin[0]
        y0, h0 = outs
        self.rest = h0 - (self.post(y0) if self.post is not None else y0)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.project(self.x)
        h = self.rest + (self.post(y) if self.post is not None else y)
        for block, (args, kwargs) in zip(self.above, self.calls):
            if args:
                h = first_tensor(block(h, *args[1:], **kwargs))
            else:
                h = first_tensor(block(**{**kwargs, "hidden_states": h}))
        he, hk = _select(h, self.batch)
        logits = self.lm_head(self.final_norm(torch.cat([he, hk], dim=0)))
        logits = _softcap(self.model, logits)
        return logits[: he.shape[0]], logits[he.shape[0]:]


def dinm_loss(logits_e: torch.Tensor, targets_e: torch.Tensor, logits_k: torch.Tensor,
              base_logp_k: torch.Tensor, hp: DINMHyperParams) -> tuple[torch.Tensor, float, float]:
    """``L = c_edit * L_e + L_c`` (Eq. 4). Returns (loss, L_e, L_c).

    L_e: mean NLL of the safe-response tokens (Eq. 2). L_c: mean over the answer positions of
    ``KL(p_0 || p_W) = sum_v p_0(v) (log p_0(v) - log p_W(v))`` (Eq. 3); with ``hp.kl_grad=False`` it
    is computed without gradient, as the reference code does.
    """
    l_e = F.cross_entropy(logits_e.float(), targets_e.to(logits_e.device))
    with torch.set_grad_enabled(hp.kl_grad and torch.is_grad_enabled()):
        logp_k = F.log_softmax(logits_k.float(), dim=-1)
        l_c = (base_logp_k.exp() * (base_logp_k - logp_k)).sum(-1).mean()
    return hp.kl_factor * l_e + l_c, l_e.item(), l_c.item()


def tune_down_proj(model, batch: DINMBatch, layer: int, hp: DINMHyperParams,
                   fast: bool | None = None) -> tuple[torch.Tensor, list[dict], dict]:
    """Adam on block ``layer``'s down-projection; returns (tuned float32 weight, losses, timings).

    The model's own parameter is not touched. Losses are recorded per step *before* the update, so the
    first entry is the loss of the unedited model.
    """
    fast = hp.fast_path if fast is None else fast
    module = arch.down_proj(model, layer)
    w0 = module.weight
    weight = w0.detach().float().clone().requires_grad_(True)
    project = _Projector(module, weight, arch.spec_for(model).down_proj_layout)
    t0 = time.perf_counter()
    forward = (FastForward if fast else NaiveForward)(model, batch, layer, project)
    if fast:
        base_k = forward.base_logits[1]
    else:
        with torch.no_grad():
            base_k = forward()[1]
    base_logp_k = F.log_softmax(base_k.float(), dim=-1)  # p_0, the unedited model's answer distribution
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
# 4. The method
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
            "hparams": hp.to_dict(), "model": getattr(model, "detoxedit_spec", None),
            "dtype": str(w0.dtype).replace("torch.", ""),
            "base_fingerprints": {name: param_fingerprint(w0)},
        }
        return Edit(method="dinm", deltas={name: delta.cpu()}, meta=meta)
