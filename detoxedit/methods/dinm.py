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

import math
import time

import torch
import torch.nn.functional as F

from detoxedit.errors import DetoxEditError
from detoxedit.methods import validation
from detoxedit.methods.base import Edit, EditCase, register_method
from detoxedit.methods.dinm_hparams import DINMHyperParams
from detoxedit.methods.machinery import (EditBatch, FastForward, NaiveForward, Projector, block_outputs,
                                         build_batch, edit_provenance, kl_to_reference, reference_logprobs)
from detoxedit.models import arch


# --------------------------------------------------------------------------------------------------
# 1. Locating the toxic layer
# --------------------------------------------------------------------------------------------------
def layer_distances(model, tok, safe: str, unsafe: str) -> dict[str, list[float]]:
    """Per-layer distances between the hidden states of the safe and the unsafe response.

    Each response is tokenized on its own (with the tokenizer's usual special tokens, as the reference
    does) and run *unpadded*, so no pad position enters a distance. The two sequences are compared over
    their common length n (the reference instead pads the shorter one and includes the pad positions):

    * ``euclidean`` (paper Sec. 3.1): ``d_l = ||H_l(safe)[:n] - H_l(unsafe)[:n]||_F``;
    * ``normalized`` (ours): ``d_l / ((||H_l(safe)[:n]||_F + ||H_l(unsafe)[:n]||_F) / 2)``, the same
      distance relative to the layer's hidden-state scale. Hidden-state norms grow with depth in
      pre-norm transformers, so the Euclidean argmax drifts to the last layer whatever the content; the
      normalised one is unchanged when a layer's states are scaled, and compares layers on what differs.
    """
    if not safe.strip() or not unsafe.strip():
        raise DetoxEditError("locating the toxic layer needs a non-empty safe and unsafe response")
    a = block_outputs(model, tok(safe)["input_ids"])
    b = block_outputs(model, tok(unsafe)["input_ids"])
    n = min(a[0].shape[0], b[0].shape[0])
    euclid, normed = [], []
    for ha, hb in zip(a, b):
        d = float(torch.linalg.norm(ha[:n] - hb[:n]))
        scale = 0.5 * (float(torch.linalg.norm(ha[:n])) + float(torch.linalg.norm(hb[:n])))
        euclid.append(d)
        normed.append(d / scale if scale > 0 else 0.0)
    return {"euclidean": euclid, "normalized": normed}


def argmax_layer(distances: list[float]) -> int:
    """The layer with the largest distance; ties go to the lower layer."""
    return max(range(len(distances)), key=lambda i: (distances[i], -i))


def locate_toxic_layer(model, tok, safe: str, unsafe: str, distance: str = "euclidean") -> tuple[int, list[float]]:
    """The toxic layer ``l* = argmax_l d_l`` and the per-layer distances of rule ``distance``
    (``euclidean``: the paper's; ``normalized``: see :func:`layer_distances`)."""
    distances = layer_distances(model, tok, safe, unsafe)[distance]
    return argmax_layer(distances), distances


# --------------------------------------------------------------------------------------------------
# 2. Tuning the down-projection
# --------------------------------------------------------------------------------------------------
def dinm_loss(logits_e: torch.Tensor, targets_e: torch.Tensor, logits_k: torch.Tensor,
              base_logp_k: torch.Tensor, hp: DINMHyperParams,
              n_knowledge: int | None = None) -> tuple[torch.Tensor, float, float]:
    """``L = c_edit * L_e + L_c`` (Eq. 4). Returns (loss, L_e, L_c).

    L_e: mean NLL of the safe-response tokens (Eq. 2). L_c: mean over the answer positions of
    ``KL(p_0 || p_W) = sum_v p_0(v) (log p_0(v) - log p_W(v))`` (Eq. 3, ``kl_to_reference``); with
    ``hp.kl_grad=False`` it is computed without gradient, as the reference code does. When the KL rows
    hold more than the knowledge answer (its ``n_knowledge`` positions come first, then the harmless
    locality set, ``hp.harmless_kl``), ``L_c = KL_knowledge + harmless_kl_weight * KL_harmless``, each a
    mean over its own positions (docs/dinm.md, Eq. A2).
    """
    l_e = F.cross_entropy(logits_e.float(), targets_e.to(logits_e.device))
    with torch.set_grad_enabled(hp.kl_grad and torch.is_grad_enabled()):
        if n_knowledge is None or n_knowledge >= logits_k.shape[0]:
            l_c = kl_to_reference(base_logp_k, logits_k)
        else:
            l_c = (kl_to_reference(base_logp_k[:n_knowledge], logits_k[:n_knowledge])
                   + hp.harmless_kl_weight * kl_to_reference(base_logp_k[n_knowledge:], logits_k[n_knowledge:]))
    return hp.kl_factor * l_e + l_c, l_e.item(), l_c.item()


class Tuner:
    """Adam on block ``layer``'s down-projection (Sec. 3.2). The frozen part of the network is computed
    once (``FastForward``) and reused by every :meth:`run`, so trying several step sizes on one case
    costs only their steps. The model's own parameter is never touched."""

    def __init__(self, model, batch: EditBatch, layer: int, hp: DINMHyperParams, fast: bool | None = None):
        fast = hp.fast_path if fast is None else fast
        self.batch, self.hp = batch, hp
        self.w0 = arch.down_proj(model, layer).weight.detach().float()
        self.project = Projector.down_proj(model, layer, self.w0.clone())
        t0 = time.perf_counter()
        self.forward = (FastForward if fast else NaiveForward)(model, batch, layer, self.project)
        if fast:
            base_k = self.forward.base_logits[1]
        else:
            with torch.no_grad():
                base_k = self.forward()[1]
        self.base_logp_k = reference_logprobs(base_k)  # p_0, the unedited model's answer distribution
        self.prepare_s = time.perf_counter() - t0

    def run(self, lr: float, steps: int | None = None, target_accuracy: float | None = None,
            diverge_factor: float | None = None) -> tuple[torch.Tensor, list[dict], dict]:
        """Adam steps from W0 at step size ``lr``; returns (tuned float32 weight, losses, info).

        Losses are recorded per step *before* the update, so the first is the unedited loss. ``steps``:
        most steps (default ``num_steps``). ``target_accuracy``: stop before a step whose teacher-forced
        token accuracy on the safe response (read off the same forward pass) has reached it: the edit is
        learned, and further steps would only move the model further. ``diverge_factor``: stop when a
        step's loss is not finite or above ``diverge_factor`` times the first (``info["diverged"]``)."""
        hp = self.hp
        weight = self.w0.clone().requires_grad_(True)
        self.project.weight = weight
        opt = torch.optim.Adam([weight], lr=lr, weight_decay=hp.weight_decay)
        losses: list[dict] = []
        info: dict = {"diverged": None, "learned_at": None}
        targets = self.batch.edit_targets
        t1 = time.perf_counter()
        for step in range(hp.num_steps if steps is None else steps):
            opt.zero_grad(set_to_none=True)
            logits_e, logits_k = self.forward()
            loss, l_e, l_c = dinm_loss(logits_e, targets, logits_k, self.base_logp_k, hp, self.batch.n_knowledge)
            acc = float((logits_e.argmax(-1).cpu() == targets).float().mean())
            losses.append({"step": step, "loss": loss.item(), "edit_loss": l_e, "kl_loss": l_c, "accuracy": acc})
            if diverge_factor is not None and not (loss.item() <= diverge_factor * losses[0]["loss"]):
                info["diverged"] = step
                break
            if target_accuracy is not None and acc >= target_accuracy:
                info["learned_at"] = step
                break
            if loss.item() < hp.early_stop_loss:
                break
            loss.backward()
            opt.step()
            if hp.norm_constraint is not None:
                with torch.no_grad():
                    weight.copy_(torch.clamp(weight, self.w0 - hp.norm_constraint, self.w0 + hp.norm_constraint))
        info["train_s"] = time.perf_counter() - t1
        return weight.detach(), losses, info


def tune_down_proj(model, batch: EditBatch, layer: int, hp: DINMHyperParams,
                   fast: bool | None = None) -> tuple[torch.Tensor, list[dict], dict]:
    """Adam on block ``layer``'s down-projection at the fixed step size ``hp.lr`` (the paper's tuning);
    returns (tuned float32 weight, losses, timings). See :class:`Tuner`."""
    tuner = Tuner(model, batch, layer, hp, fast)
    weight, losses, info = tuner.run(hp.lr)
    return weight, losses, {"prepare_s": tuner.prepare_s, "train_s": info["train_s"]}


LOCALITY_IDS = tuple(f"harmless-{i}" for i in range(121, 137))
"""Built-in harmless prompts (``general/builtin/harmless.jsonl``) whose unedited continuations join the KL
term when ``harmless_kl`` > 0 (the first ``harmless_kl`` of them). Disjoint from the prompts validation
probes (``validation.PROBE_IDS``) and from those the over-refusal checks score (the file's first)."""

DIVERGE_FACTOR = 3.0
"""Adaptive step size: a try stops when its loss exceeds this multiple of its first (it diverges). Adam's
first steps move every weight by about the step size, so the loss may rise for a step or two before it
falls; only a rise this large is taken as divergence."""


def next_step_size(lr: float, too_small: float | None, too_large: float | None, factor: float) -> float:
    """The next step size of the adaptive search (``docs/dinm.md``, Eq. A1): the geometric mean of the
    bracket when both ends are known, else ``lr * factor`` (not learned yet) or ``lr / factor`` (overshot).
    ``too_small``: the largest step size known to learn too little; ``too_large``: the smallest known to
    overshoot."""
    if too_small is not None and too_large is not None:
        return math.sqrt(too_small * too_large)
    if too_large is not None:
        return too_large / factor
    return too_small * factor


def pick_attempt(attempts: list[dict]) -> int:
    """Index of the attempt to keep: the first that passed; else the most accurate of those that did
    not overshoot (``validation.too_far``); else the one with the smallest step size."""
    for i, a in enumerate(attempts):
        if a["status"] == "ok":
            return i
    safe = [i for i, a in enumerate(attempts) if not validation.too_far(a["reasons"])]
    if safe:
        return max(safe, key=lambda i: (attempts[i]["checks"]["token_accuracy"], -attempts[i]["lr"]))
    return min(range(len(attempts)), key=lambda i: attempts[i]["lr"])


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

    def choose_layer(self, model, tok, case: EditCase) -> tuple[int, dict[str, list[float]] | None]:
        """The layer to edit and, when it was located, the per-layer distances of every rule."""
        hp = self.hparams
        if hp.layers:
            return int(hp.layers[0]), None
        if hp.locate == "once_per_run" and self._run_layer is not None:
            return self._run_layer, None
        if not case.unsafe:
            raise DetoxEditError("DINM needs an unsafe response to locate the toxic layer "
                                 "(give one, fix the layer, or let the caller generate the model's own)")
        distances = layer_distances(model, tok, case.safe, case.unsafe)
        layer = argmax_layer(distances[hp.distance])
        if hp.locate == "once_per_run":
            self._run_layer = layer
        return layer, distances

    def edit(self, model, tok, case: EditCase) -> Edit:
        hp = self.hparams
        t0 = time.perf_counter()
        layer, distances = self.choose_layer(model, tok, case)
        t_locate = time.perf_counter() - t0
        w0 = arch.down_proj(model, layer).weight  # range check with a clear message
        name = arch.down_proj_param_name(model, layer)
        extra = (validation.continuations(model, tok, hp, LOCALITY_IDS[: hp.harmless_kl], hp.harmless_tokens,
                                          with_end=hp.harmless_end) if hp.harmless_kl else [])
        batch = build_batch(tok, case, hp, [(s.ids, len(s.ids) - len(s.targets)) for s in extra])
        tuner = Tuner(model, batch, layer, hp)
        t1 = time.perf_counter()
        ref = validation.reference(model, tok, case, hp, objective=(hp.kl_factor, 1.0)) if hp.validation else None
        t_reference = time.perf_counter() - t1
        adaptive = hp.step_size == "adaptive"
        attempts: list[dict] = []
        kept: list[tuple[Edit, list[dict]]] = []
        lr, too_small, too_large = hp.lr, None, None
        t_train = t_check = 0.0
        for _ in range(hp.max_attempts if adaptive else 1):
            if adaptive:
                weight, losses, info = tuner.run(lr, steps=hp.max_steps, target_accuracy=hp.target_accuracy,
                                                 diverge_factor=DIVERGE_FACTOR)
            else:
                weight, losses, info = tuner.run(lr)
            t_train += info["train_s"]
            delta = weight.to(w0.dtype).float() - w0.detach().float()
            candidate = Edit(method="dinm", deltas={name: delta.cpu()}, meta={})
            attempt = {"lr": lr, "steps_run": len(losses), "diverged_at": info["diverged"]}
            if ref is not None:
                t2 = time.perf_counter()
                attempt.update(validation.check(model, tok, ref, candidate, hp))
                t_check += time.perf_counter() - t2
                if info["diverged"] is not None:
                    attempt["status"] = "failed"
                    attempt["reasons"].append(f"loss rose: diverged at step {info['diverged']}, loss "
                                              f"{losses[-1]['loss']:.3f} > {DIVERGE_FACTOR} x start "
                                              f"{losses[0]['loss']:.3f}")
            attempts.append(attempt)
            kept.append((candidate, losses))
            if ref is None or attempt["status"] == "ok":
                break
            if validation.too_far(attempt["reasons"]):
                too_large = lr if too_large is None else min(too_large, lr)
            else:
                too_small = lr if too_small is None else max(too_small, lr)
            if too_small is not None and too_large is not None and too_large / too_small < hp.lr_factor ** 0.5:
                break  # the bracket is narrower than half a factor: no step size between them passes
            lr = next_step_size(lr, too_small, too_large, hp.lr_factor)
        chosen = pick_attempt(attempts) if ref is not None else 0
        edit, losses = kept[chosen]
        meta = {
            "method": "dinm", "case_id": case.case_id, "layer": layer, "param": name,
            "distance": None if distances is None else hp.distance,
            "distances": None if distances is None else distances["euclidean"],
            "distances_normalized": None if distances is None else distances["normalized"],
            "unsafe_source": case.unsafe_source, "step_size": hp.step_size, "lr": attempts[chosen]["lr"],
            "losses": losses, "steps_run": len(losses),
            "early_stopped": len(losses) < hp.num_steps and attempts[chosen]["diverged_at"] is None,
            "timings": {"locate_s": t_locate, "prepare_s": tuner.prepare_s, "train_s": t_train,
                        "validate_s": t_reference + t_check, "total_s": time.perf_counter() - t0},
            **edit_provenance(model, hp, {name: w0}),
        }
        if ref is not None:
            result = attempts[chosen]
            reasons = list(result["reasons"])
            if result["status"] != "ok" and len(attempts) > 1:
                tried = ", ".join(f"{a['lr']:.3g}" for a in attempts)
                reasons.append(f"no step size passed in {len(attempts)} attempts (lr {tried}); "
                               f"kept lr {result['lr']:.3g}")
            meta["validation"] = {
                "status": result["status"], "reasons": reasons, "checks": result["checks"],
                "attempts": [{"lr": a["lr"], "status": a["status"], "reasons": a["reasons"],
                              "steps_run": a["steps_run"],
                              "token_accuracy": a["checks"]["token_accuracy"],
                              "eot_logprob_after": a["checks"]["eot_logprob_after"],
                              "kl_knowledge": a["checks"]["kl_knowledge"],
                              "kl_harmless": a["checks"]["kl_harmless"]} for a in attempts],
            }
        edit.meta = meta
        return edit
