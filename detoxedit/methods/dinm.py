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

**Several cases at once.** ``DINM.edit_many`` trains the cases that edit the same matrix in one batch,
each row through its own case's matrix (``StackedTuner``, ``machinery.StackedForward``), and returns the
lone edits up to float rounding (docs/dinm.md, "Several cases at once"; ``tests/test_dinm_batched.py``).

Sequences, the batch, the projector, the KL term and the hidden-state capture are shared with the other
methods and live in ``detoxedit/methods/machinery.py``; this file holds DINM's own algorithm.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
import torch.nn.functional as F

from detoxedit.errors import DetoxEditError
from detoxedit.methods import validation
from detoxedit.methods.base import Edit, EditCase, register_method
from detoxedit.methods.dinm_hparams import DINMHyperParams
from detoxedit.methods.machinery import (EditBatch, FastForward, NaiveForward, Projector, StackedForward,
                                         block_outputs, build_batch, edit_provenance, kl_to_reference,
                                         reference_logprobs)
from detoxedit.models import arch
from detoxedit.models.generate import pad_id


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


class StackedTuner:
    """:class:`Tuner` for several cases that edit the same down-projection, trained together (docs/dinm.md,
    "Several cases at once"). Each case k has its own float32 matrix ``W_k`` and its own loss
    ``L_k = c_edit * L_e,k + L_c,k`` (Eq. 4, with Eq. 2 and Eq. 3 / A2 on its own rows); one forward pass
    runs every case's rows, each through its own matrix (``machinery.StackedForward``), and one backward
    pass of ``sum_k L_k`` gives ``W_k`` the gradient of ``L_k`` alone, because ``L_j`` (j != k) never reads
    ``W_k``. Each case has its own Adam (step size, moments and step count) and its own stopping rules,
    so ``W_k`` is what :class:`Tuner` gives case k alone, up to float rounding. A case that stops leaves
    the batch; when at most half of a batch's cases still train, the frozen prefix is recomputed for
    those alone (the cost of one no-grad pass over their rows)."""

    def __init__(self, model, batches: Sequence[EditBatch], layer: int, hp: DINMHyperParams, pad: int):
        self.model, self.batches, self.layer, self.hp, self.pad = model, list(batches), layer, hp, pad
        self.w0 = arch.down_proj(model, layer).weight.detach().float()
        self.prepare_s = 0.0
        self.full = self._forward(tuple(range(len(self.batches))))
        # p_0 of each case, from the unedited pass over every row (Eq. 3, A2)
        self.base_logp_k = [reference_logprobs(k) for _, k in self.full.base_logits]

    def _forward(self, cases: tuple[int, ...]) -> StackedForward:
        t0 = time.perf_counter()
        forward = StackedForward(self.model, [self.batches[k] for k in cases], self.layer, self.pad)
        forward.cases = cases
        self.prepare_s += time.perf_counter() - t0
        return forward

    def _fit(self, forward: StackedForward, running: list[int]) -> StackedForward:
        """``forward`` (whose cases include ``running``) while more than half of its cases still train,
        else a new batch of the running ones: the rows of stopped cases cost at most as much as the rest,
        and a batch is rebuilt at most log2(K) times per try."""
        if 2 * len(running) > len(forward.cases):
            return forward
        return self._forward(tuple(running))

    def run(self, lrs: dict[int, float], steps: int | None = None, target_accuracy: float | None = None,
            diverge_factor: float | None = None) -> dict[int, tuple[torch.Tensor, list[dict], dict]]:
        """:meth:`Tuner.run` for the cases ``lrs`` names (case index -> its step size), together, with the
        same ``steps``, ``target_accuracy`` and ``diverge_factor``; returns case index -> (tuned float32
        weight, losses, info). Every case's steps, losses and stops are its own; ``info["train_s"]`` is
        the time of the whole run, shared by its cases."""
        hp = self.hp
        n_steps = hp.num_steps if steps is None else steps
        weights = {k: self.w0.clone().requires_grad_(True) for k in lrs}
        opts = {k: torch.optim.Adam([weights[k]], lr=lr, weight_decay=hp.weight_decay) for k, lr in lrs.items()}
        losses: dict[int, list[dict]] = {k: [] for k in lrs}
        info: dict[int, dict] = {k: {"diverged": None, "learned_at": None} for k in lrs}
        running = list(lrs) if n_steps > 0 else []
        forward = self.full
        t1 = time.perf_counter()
        while running:
            forward = self._fit(forward, running)
            # a case that stopped (or has no try this round) rides along at W0: its rows are not read
            out = forward([weights[k] if k in running else self.w0 for k in forward.cases])
            stepping = []
            for k in running:
                logits_e, logits_k = out[forward.cases.index(k)]
                batch, step = self.batches[k], len(losses[k])
                targets = batch.edit_targets
                loss, l_e, l_c = dinm_loss(logits_e, targets, logits_k, self.base_logp_k[k], hp, batch.n_knowledge)
                acc = float((logits_e.argmax(-1).cpu() == targets).float().mean())
                losses[k].append({"step": step, "loss": loss.item(), "edit_loss": l_e, "kl_loss": l_c,
                                  "accuracy": acc})
                if diverge_factor is not None and not (loss.item() <= diverge_factor * losses[k][0]["loss"]):
                    info[k]["diverged"] = step
                elif target_accuracy is not None and acc >= target_accuracy:
                    info[k]["learned_at"] = step
                elif loss.item() >= hp.early_stop_loss:
                    stepping.append((k, loss))
            if stepping:
                for k, _ in stepping:
                    opts[k].zero_grad(set_to_none=True)
                sum(loss for _, loss in stepping).backward()
                for k, _ in stepping:
                    opts[k].step()
                    if hp.norm_constraint is not None:
                        with torch.no_grad():
                            weights[k].copy_(torch.clamp(weights[k], self.w0 - hp.norm_constraint,
                                                         self.w0 + hp.norm_constraint))
            running = [k for k, _ in stepping if len(losses[k]) < n_steps]
        train_s = time.perf_counter() - t1
        return {k: (weights[k].detach(), losses[k], {**info[k], "train_s": train_s}) for k in lrs}


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


class _Search:
    """One case's tries (docs/dinm.md, "Adaptive step size"): each try's weights are validated, the next
    step size follows Eq. A1 from the bracket the tries so far give, and the search is ``done`` after a try
    that passed, when the bracket is narrower than ``sqrt(lr_factor)``, or after ``max_attempts`` tries.
    ``step_size: fixed`` (or validation off) makes one try. The lone and the batched edits share it."""

    def __init__(self, hp: DINMHyperParams, ref):
        self.hp, self.ref = hp, ref
        self.adaptive = hp.step_size == "adaptive"
        self.lr, self.too_small, self.too_large = hp.lr, None, None
        self.attempts: list[dict] = []
        self.kept: list[tuple[Edit, list[dict]]] = []
        self.t_train = self.t_check = 0.0
        self.done = False

    def run_args(self) -> dict:
        """The keyword arguments of a try (``Tuner.run``): adaptive tries stop once learned or diverged."""
        if self.adaptive:
            return {"steps": self.hp.max_steps, "target_accuracy": self.hp.target_accuracy,
                    "diverge_factor": DIVERGE_FACTOR}
        return {}

    def add(self, model, tok, name: str, w0: torch.Tensor, weight: torch.Tensor, losses: list[dict],
            info: dict) -> None:
        """Record the try at ``self.lr`` that gave ``weight``: validate it, then finish or set the next lr."""
        hp, ref = self.hp, self.ref
        self.t_train += info["train_s"]
        delta = weight.to(w0.dtype).float() - w0.detach().float()
        candidate = Edit(method="dinm", deltas={name: delta.cpu()}, meta={})
        attempt = {"lr": self.lr, "steps_run": len(losses), "diverged_at": info["diverged"]}
        if ref is not None:
            t2 = time.perf_counter()
            attempt.update(validation.check(model, tok, ref, candidate, hp))
            self.t_check += time.perf_counter() - t2
            if info["diverged"] is not None:
                attempt["status"] = "failed"
                attempt["reasons"].append(f"loss rose: diverged at step {info['diverged']}, loss "
                                          f"{losses[-1]['loss']:.3f} > {DIVERGE_FACTOR} x start "
                                          f"{losses[0]['loss']:.3f}")
        self.attempts.append(attempt)
        self.kept.append((candidate, losses))
        if ref is None or attempt["status"] == "ok" or len(self.attempts) >= (hp.max_attempts if self.adaptive else 1):
            self.done = True
            return
        if validation.too_far(attempt["reasons"]):
            self.too_large = self.lr if self.too_large is None else min(self.too_large, self.lr)
        else:
            self.too_small = self.lr if self.too_small is None else max(self.too_small, self.lr)
        if (self.too_small is not None and self.too_large is not None
                and self.too_large / self.too_small < hp.lr_factor ** 0.5):
            self.done = True  # the bracket is narrower than half a factor: no step size between them passes
            return
        self.lr = next_step_size(self.lr, self.too_small, self.too_large, hp.lr_factor)


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
        t0 = time.perf_counter()
        layer, distances = self.choose_layer(model, tok, case)
        return self._edit_located(model, tok, case, layer, distances, t0)

    def _batch(self, model, tok, case: EditCase) -> EditBatch:
        """The case's training rows: edit, knowledge and the harmless locality set (Eq. 2, 3, A2)."""
        hp = self.hparams
        extra = (validation.continuations(model, tok, hp, LOCALITY_IDS[: hp.harmless_kl], hp.harmless_tokens,
                                          with_end=hp.harmless_end) if hp.harmless_kl else [])
        return build_batch(tok, case, hp, [(s.ids, len(s.ids) - len(s.targets)) for s in extra])

    def _reference(self, model, tok, case: EditCase):
        hp = self.hparams
        return validation.reference(model, tok, case, hp, objective=(hp.kl_factor, 1.0)) if hp.validation else None

    def _edit_located(self, model, tok, case: EditCase, layer: int, distances, t0: float) -> Edit:
        """One case's edit at its located ``layer`` (tuning Eq. 4, the step size searched per Eq. A1)."""
        hp = self.hparams
        t_locate = time.perf_counter() - t0
        w0 = arch.down_proj(model, layer).weight  # range check with a clear message
        name = arch.down_proj_param_name(model, layer)
        tuner = Tuner(model, self._batch(model, tok, case), layer, hp)
        t1 = time.perf_counter()
        ref = self._reference(model, tok, case)
        t_reference = time.perf_counter() - t1
        search = _Search(hp, ref)
        while not search.done:
            weight, losses, info = tuner.run(search.lr, **search.run_args())
            search.add(model, tok, name, w0, weight, losses, info)
        timings = {"locate_s": t_locate, "prepare_s": tuner.prepare_s, "train_s": search.t_train,
                   "validate_s": t_reference + search.t_check}
        edit = self._finish(model, case, layer, name, distances, w0, search, timings)
        timings["total_s"] = time.perf_counter() - t0
        return edit

    def edit_joint(self, model, tok, cases: Sequence[EditCase], batch_cases: int = 8, epochs: int | None = None,
                   on_step=None) -> Edit:
        """One edit trained on all ``cases`` at once (``detoxedit detox --combine joint``): :func:`joint_edit`,
        docs/detox.md Eq. J1."""
        return joint_edit(self, model, tok, cases, batch_cases=batch_cases, epochs=epochs, on_step=on_step)

    def edit_many(self, model, tok, cases: Sequence[EditCase]) -> list[Edit]:
        """The edits of ``cases``, in order: what ``[self.edit(model, tok, c) for c in cases]`` returns, up
        to float rounding, with the cases that edit the same matrix trained together (docs/dinm.md,
        "Several cases at once"). Each case's layer is located as ``edit`` locates it, in case order; the
        cases are grouped by layer; a group of several is tuned by :class:`StackedTuner` (Eq. 4 per case,
        in one batch), round by round: every case of a round runs one try at its own step size, then
        each try is validated alone and the case's search (Eq. A1) gives its next step size, so a case
        that passed drops out while another backtracks. A group of one takes the lone path.

        ``meta["batched_with"]``: how many cases were trained together (1: alone); every other field is
        the lone edit's, with a group's shared times (the stacked forward, each round's training)
        divided equally among the cases that shared them. Falls back to one ``edit`` after another when
        ``fast_path`` is off (the naive path exists as the per-case reference of the fast one) or a
        subclass overrides ``edit``."""
        hp = self.hparams
        if not hp.fast_path or type(self).edit is not DINM.edit:
            return [self.edit(model, tok, case) for case in cases]
        located = []
        for case in cases:
            t0 = time.perf_counter()
            layer, distances = self.choose_layer(model, tok, case)
            located.append((layer, distances, time.perf_counter() - t0))
        by_layer: dict[int, list[int]] = {}
        for i, (layer, _, _) in enumerate(located):
            by_layer.setdefault(layer, []).append(i)
        edits: list[Edit | None] = [None] * len(cases)
        for layer, members in by_layer.items():
            if len(members) == 1:
                i = members[0]
                done = [self._edit_located(model, tok, cases[i], layer, located[i][1],
                                           time.perf_counter() - located[i][2])]
            else:
                done = self._edit_together(model, tok, [cases[i] for i in members], layer,
                                           [located[i] for i in members])
            for i, edit in zip(members, done):
                edit.meta["batched_with"] = len(members)
                edits[i] = edit
        return edits

    def _edit_together(self, model, tok, cases: list[EditCase], layer: int, located: list[tuple]) -> list[Edit]:
        """The edits of ``cases``, which all edit block ``layer``'s down-projection, tuned in one batch
        (:class:`StackedTuner`); the validation and the step-size search (Eq. A1) run per case."""
        hp = self.hparams
        t_start = time.perf_counter()
        w0 = arch.down_proj(model, layer).weight
        name = arch.down_proj_param_name(model, layer)
        tuner = StackedTuner(model, [self._batch(model, tok, case) for case in cases], layer, hp, pad_id(tok))
        refs, t_refs = [], []
        for case in cases:
            t1 = time.perf_counter()
            refs.append(self._reference(model, tok, case))
            t_refs.append(time.perf_counter() - t1)
        searches = [_Search(hp, ref) for ref in refs]
        while todo := [k for k, search in enumerate(searches) if not search.done]:
            tried = tuner.run({k: searches[k].lr for k in todo}, **searches[todo[0]].run_args())
            for k in todo:
                weight, losses, info = tried[k]
                searches[k].add(model, tok, name, w0, weight, losses, {**info, "train_s": info["train_s"] / len(todo)})
        n = len(cases)
        edits, times = [], []
        for case, (_, distances, t_locate), search, t_ref in zip(cases, located, searches, t_refs):
            timings = {"locate_s": t_locate, "prepare_s": tuner.prepare_s / n, "train_s": search.t_train,
                       "validate_s": t_ref + search.t_check}
            edits.append(self._finish(model, case, layer, name, distances, w0, search, timings))
            times.append(timings)
        # total: a case's own times plus an equal share of what the group did besides (batches, bookkeeping)
        rest = (time.perf_counter() - t_start - sum(t["prepare_s"] + t["train_s"] + t["validate_s"] for t in times)) / n
        for t in times:
            t["total_s"] = t["locate_s"] + t["prepare_s"] + t["train_s"] + t["validate_s"] + max(0.0, rest)
        return edits

    def _finish(self, model, case: EditCase, layer: int, name: str, distances, w0: torch.Tensor, search: _Search,
                timings: dict) -> Edit:
        """The kept try of ``search`` (``pick_attempt``) as an ``Edit`` with its meta."""
        hp = self.hparams
        attempts = search.attempts
        chosen = pick_attempt(attempts) if search.ref is not None else 0
        edit, losses = search.kept[chosen]
        meta = {
            "method": "dinm", "case_id": case.case_id, "layer": layer, "param": name,
            "distance": None if distances is None else hp.distance,
            "distances": None if distances is None else distances["euclidean"],
            "distances_normalized": None if distances is None else distances["normalized"],
            "unsafe_source": case.unsafe_source, "step_size": hp.step_size, "lr": attempts[chosen]["lr"],
            "losses": losses, "steps_run": len(losses),
            "early_stopped": len(losses) < hp.num_steps and attempts[chosen]["diverged_at"] is None,
            "timings": timings,
            **edit_provenance(model, hp, {name: w0}),
        }
        if search.ref is not None:
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


# --------------------------------------------------------------------------------------------------
# 4. One delta for many cases: the joint objective (``detoxedit detox --combine joint``; docs/detox.md)
# --------------------------------------------------------------------------------------------------
# Separate from the per-case editor above, which it only calls (``choose_layer``), with the same loss
# (``dinm_loss``: Eq. 2, 3, 4 and A2) and the same frozen-prefix forward (``machinery.FastForward``).
def most_frequent_layer(layers: Sequence[int]) -> tuple[int, dict[int, int]]:
    """``(layer, histogram)``: the layer located most often among ``layers`` and ``{layer: count}``;
    ties go to the lower layer (as :func:`argmax_layer` breaks ties)."""
    if not layers:
        raise DetoxEditError("no located layer to choose from")
    hist: dict[int, int] = {}
    for layer in layers:
        hist[int(layer)] = hist.get(int(layer), 0) + 1
    best = max(hist, key=lambda layer: (hist[layer], -layer))
    return best, dict(sorted(hist.items()))


def harmless_batch(tok, hp: DINMHyperParams, extra: Sequence[tuple[list[int], int]]) -> EditBatch:
    """The harmless locality rows (Eq. A2) as an ``EditBatch`` of their own, read once per step of a joint
    edit instead of once per case: rows 0 and 1 are the default knowledge pair (an ``EditBatch`` opens with
    an edit row and a knowledge row; the joint loss ignores both), then one row per harmless sequence, whose
    positions follow the knowledge answer's in the KL logits (``n_knowledge`` splits them)."""
    from detoxedit.methods.machinery import DEFAULT_KNOWLEDGE

    anchor = EditCase(prompt=DEFAULT_KNOWLEDGE[0], safe=DEFAULT_KNOWLEDGE[1])
    return build_batch(tok, anchor, hp, extra)


class JointTuner:
    """Adam on one down-projection ``W`` shared by N cases, on the joint objective (docs/detox.md, Eq. J1)

        L_J(W) = (1/N) sum_i [ c_edit * L_e,i(W) + KL_k,i(W) ] + harmless_kl_weight * KL_h(W)

    where ``L_e,i`` is case i's safe-response NLL (Eq. 2), ``KL_k,i`` the KL on case i's knowledge pair
    (Eq. 3) and ``KL_h`` the harmless locality set's mean KL (Eq. A2), counted once, not once per case:
    for N = 1, ``L_J`` is DINM's per-case loss (Eq. 4 with A2), and a run gives :class:`Tuner`'s weights
    for the same step size and steps (``tests/test_detox.py``). Every case has its own frozen-prefix
    forward (``FastForward``, computed once), all reading the one tuned matrix through a shared
    ``Projector``; the harmless rows have theirs (:func:`harmless_batch`).

    A step takes one mini-batch ``B`` of cases (in case order, ``batch_cases`` at a time; one epoch
    visits every case once) and descends ``L_B = (1/|B|) sum_{i in B} [c_edit * L_e,i + KL_k,i] +
    harmless_kl_weight * KL_h`` (Eq. J2), whose mean over an epoch's mini-batches is ``L_J`` when they
    are equal in size. The cases' gradients are accumulated one case at a time, so memory holds one
    case's backward pass whatever ``B`` is. With ``B >= N`` every step is an exact gradient step on ``L_J``."""

    def __init__(self, model, batches: Sequence[EditBatch], harmless: EditBatch | None, layer: int,
                 hp: DINMHyperParams, batch_cases: int):
        if not batches:
            raise DetoxEditError("a joint edit needs at least one case")
        if batch_cases < 1:
            raise DetoxEditError("batch_cases must be >= 1")
        self.hp, self.batches = hp, list(batches)
        self.w0 = arch.down_proj(model, layer).weight.detach().float()
        self.project = Projector.down_proj(model, layer, self.w0.clone())
        t0 = time.perf_counter()
        self.forwards = [FastForward(model, b, layer, self.project) for b in self.batches]
        self.base_logp = [reference_logprobs(f.base_logits[1]) for f in self.forwards]
        self.harmless = None
        if harmless is not None and harmless.extra_kl:
            forward = FastForward(model, harmless, layer, self.project)
            n = harmless.n_knowledge
            self.harmless = (forward, n, reference_logprobs(forward.base_logits[1][n:]))
        n_cases = len(self.batches)
        self.chunks = [list(range(i, min(i + batch_cases, n_cases))) for i in range(0, n_cases, batch_cases)]
        self.prepare_s = time.perf_counter() - t0

    def _harmless_kl(self) -> torch.Tensor | None:
        """``KL_h``: the mean KL over the harmless rows' positions (Eq. A2), unweighted; with ``kl_grad``
        off it carries no gradient, as in :func:`dinm_loss`."""
        if self.harmless is None:
            return None
        forward, n, base = self.harmless
        with torch.set_grad_enabled(self.hp.kl_grad and torch.is_grad_enabled()):
            return kl_to_reference(base, forward()[1][n:])

    def run(self, lr: float, epochs: int, target_accuracy: float | None = None,
            diverge_factor: float | None = None, on_step=None) -> tuple[torch.Tensor, list[dict], dict]:
        """Adam from W0 at step size ``lr`` for at most ``epochs`` epochs; returns (tuned float32 weight,
        one loss record per step, info). The stopping rules are :meth:`Tuner.run`'s, read over the whole
        set: stop before an update once every case's latest teacher-forced accuracy has reached
        ``target_accuracy``, or every mini-batch's latest loss is below ``early_stop_loss``; stop when a
        mini-batch's loss is not finite or above ``diverge_factor`` times its first (``info["diverged"]``).
        ``on_step(record)`` is called after every step's losses are known (progress display)."""
        hp = self.hp
        weight = self.w0.clone().requires_grad_(True)
        self.project.weight = weight
        opt = torch.optim.Adam([weight], lr=lr, weight_decay=hp.weight_decay)
        n = len(self.batches)
        accuracy: list[float | None] = [None] * n
        first: list[float | None] = [None] * len(self.chunks)
        latest: list[float | None] = [None] * len(self.chunks)
        losses: list[dict] = []
        info: dict = {"diverged": None, "learned_at": None, "epochs_run": 0}
        t1 = time.perf_counter()
        stop = False
        for epoch in range(epochs):
            for c, chunk in enumerate(self.chunks):
                opt.zero_grad(set_to_none=True)
                total, l_e, l_c, accs = 0.0, 0.0, 0.0, []
                for i in chunk:  # one case's graph at a time; the gradients add up in weight.grad
                    logits_e, logits_k = self.forwards[i]()
                    targets = self.batches[i].edit_targets
                    loss, le, lc = dinm_loss(logits_e, targets, logits_k, self.base_logp[i], hp)
                    (loss / len(chunk)).backward()
                    accuracy[i] = float((logits_e.detach().argmax(-1).cpu() == targets).float().mean())
                    total += loss.item() / len(chunk)
                    l_e += le / len(chunk)
                    l_c += lc / len(chunk)
                    accs.append(accuracy[i])
                kl_h = self._harmless_kl()
                if kl_h is not None:
                    if kl_h.requires_grad:
                        (hp.harmless_kl_weight * kl_h).backward()
                    total += hp.harmless_kl_weight * kl_h.item()
                record = {"step": len(losses), "epoch": epoch, "loss": total, "edit_loss": l_e, "kl_loss": l_c,
                          "harmless_kl": None if kl_h is None else kl_h.item(),
                          "accuracy": sum(accs) / len(accs), "min_accuracy": min(accs)}
                losses.append(record)
                if on_step is not None:
                    on_step(record)
                first[c] = total if first[c] is None else first[c]
                latest[c] = total
                if diverge_factor is not None and not (total <= diverge_factor * first[c]):
                    info["diverged"] = record["step"]
                    stop = True
                elif target_accuracy is not None and all(a is not None and a >= target_accuracy for a in accuracy):
                    info["learned_at"] = record["step"]
                    stop = True
                elif all(v is not None and v < hp.early_stop_loss for v in latest):
                    stop = True
                if stop:
                    break
                opt.step()
                if hp.norm_constraint is not None:
                    with torch.no_grad():
                        weight.copy_(torch.clamp(weight, self.w0 - hp.norm_constraint, self.w0 + hp.norm_constraint))
            info["epochs_run"] = epoch + 1
            if stop:
                break
        info["train_s"] = time.perf_counter() - t1
        self.project.weight = self.w0
        return weight.detach(), losses, info


def joint_edit(editor: DINM, model, tok, cases: Sequence[EditCase], batch_cases: int = 8,
               epochs: int | None = None, on_step=None) -> Edit:
    """One ``Edit`` for all ``cases``: a single delta on one down-projection, trained on the joint
    objective (docs/detox.md, Eq. J1; :class:`JointTuner`), then validated on every case.

    1. **Layer.** Each case's toxic layer is located as ``editor.edit`` locates it (Sec. 3.1,
       ``choose_layer``); the layer located most often is edited (ties: the lower), and the histogram is
       recorded (``meta["layer_histogram"]``): cases located elsewhere are edited at a layer their own
       localisation did not pick.
    2. **Training.** ``epochs`` epochs (default: ``max_steps`` with ``step_size: adaptive``, else
       ``num_steps``; with ``batch_cases >= N`` an epoch is one step, so N = 1 takes DINM's own steps)
       at step size ``lr``, with :class:`Tuner`'s stopping rules over all cases. With ``step_size:
       adaptive`` a run that diverges (a mini-batch's loss above ``DIVERGE_FACTOR`` times its first) is
       restarted from W0 at ``lr / lr_factor``, at most ``max_attempts`` runs; the per-case search of
       Eq. A1 does not apply (one step size serves every case).
    3. **Validation** (``hp.validation``): every case's checks (docs/dinm.md, "Validation") on the one
       delta. ``meta["validation"]``: ``status`` ok when every case passed, ``passed``/``n``, and
       ``per_case`` (each case's status, reasons and checks). No case is dropped: the delta is shared.

    Pure like ``edit``: the model is left as it was. ``on_step(record)``: called after every step."""
    hp = editor.hparams
    cases = list(cases)
    if not cases:
        raise DetoxEditError("a joint edit needs at least one case")
    t0 = time.perf_counter()
    located = [editor.choose_layer(model, tok, case) for case in cases]
    layer, histogram = most_frequent_layer([layer for layer, _ in located])
    t_locate = time.perf_counter() - t0
    w0 = arch.down_proj(model, layer).weight
    name = arch.down_proj_param_name(model, layer)
    extra = (validation.continuations(model, tok, hp, LOCALITY_IDS[: hp.harmless_kl], hp.harmless_tokens,
                                      with_end=hp.harmless_end) if hp.harmless_kl else [])
    rows = [(s.ids, len(s.ids) - len(s.targets)) for s in extra]
    tuner = JointTuner(model, [build_batch(tok, case, hp) for case in cases],
                       harmless_batch(tok, hp, rows) if rows else None, layer, hp, batch_cases)
    adaptive = hp.step_size == "adaptive"
    epochs = epochs if epochs is not None else (hp.max_steps if adaptive else hp.num_steps)
    lr, attempts = hp.lr, []
    for _ in range(hp.max_attempts if adaptive else 1):
        weight, losses, info = tuner.run(lr, epochs, target_accuracy=hp.target_accuracy if adaptive else None,
                                         diverge_factor=DIVERGE_FACTOR if adaptive else None, on_step=on_step)
        attempts.append({"lr": lr, "steps_run": len(losses), "epochs_run": info["epochs_run"],
                         "diverged_at": info["diverged"], "learned_at": info["learned_at"],
                         "train_s": info["train_s"]})
        if info["diverged"] is None:
            break
        lr = lr / hp.lr_factor
    lr = attempts[-1]["lr"]
    delta = weight.to(w0.dtype).float() - w0.detach().float()
    edit = Edit(method="dinm", deltas={name: delta.cpu()}, meta={})
    t1 = time.perf_counter()
    checked = None
    if hp.validation:
        checked = []
        for case in cases:
            ref = validation.reference(model, tok, case, hp, objective=(hp.kl_factor, 1.0))
            checked.append(validation.check(model, tok, ref, edit, hp))
    t_validate = time.perf_counter() - t1
    edit.meta = {
        "method": "dinm", "combine": "joint", "case_ids": [case.case_id for case in cases],
        "layer": layer, "param": name,
        "layer_rule": "the layer located most often over the cases (ties: the lower)",
        "layer_histogram": {str(k): v for k, v in histogram.items()},
        "located": [{"case_id": case.case_id, "layer": loc_layer, "unsafe_source": case.unsafe_source}
                    for case, (loc_layer, _) in zip(cases, located)],
        "distance": None if located[0][1] is None else hp.distance,
        "step_size": hp.step_size, "lr": lr, "attempts": attempts, "batch_cases": batch_cases,
        "epochs": epochs, "epochs_run": attempts[-1]["epochs_run"], "losses": losses, "steps_run": len(losses),
        "diverged_at": attempts[-1]["diverged_at"],
        "timings": {"locate_s": t_locate, "prepare_s": tuner.prepare_s,
                    "train_s": sum(a["train_s"] for a in attempts), "validate_s": t_validate,
                    "total_s": time.perf_counter() - t0},
        **edit_provenance(model, hp, {name: w0}),
    }
    if checked is not None:
        failed = [(case, c) for case, c in zip(cases, checked) if c["status"] != "ok"]
        reasons = ([f"{len(failed)} of {len(cases)} cases failed validation"] if failed else [])
        if attempts[-1]["diverged_at"] is not None:
            reasons.append(f"training diverged at every step size tried "
                           f"({', '.join(format(a['lr'], '.3g') for a in attempts)})")
        edit.meta["validation"] = {
            "status": "failed" if reasons else "ok", "reasons": reasons,
            "passed": len(cases) - len(failed), "n": len(cases),
            "per_case": [{"case_id": case.case_id, **c} for case, c in zip(cases, checked)],
        }
    return edit
