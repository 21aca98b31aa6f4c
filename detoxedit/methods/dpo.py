"""DPO: Direct Preference Optimization (Rafailov et al., NeurIPS 2023), the paper's DPO baseline,
preferring the safe response over the unsafe one for each adversarial prompt of the train split.

Loss (Rafailov et al. 2023, Eq. 7), per pair (x, y_w = safe, y_l = unsafe)::

    L = -log sigma( beta * [ (log pi_theta(y_w|x) - log pi_ref(y_w|x))
                           - (log pi_theta(y_l|x) - log pi_ref(y_l|x)) ] )

where ``log pi(y|x)`` is the summed log-probability of the response tokens (chat-formatted prompt
with the suffix system prompt; response ids end with the end-of-turn token) and ``pi_ref`` is the
frozen base model. The base model never changes, so the reference log-probabilities are computed
once, before training, without gradient (half the forward passes of a naive loop). The policy is the
base model plus a LoRA (or full) delta on the projection matrices; the trained delta is one ``Edit``.

Training loop and LoRA are our own (no TRL, no PEFT): see ``detoxedit/methods/_tuning.py`` for why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detoxedit.methods._tuning import (TrainedEditor, batches, collate, encode, pad_of,
                                       require_responses, response_logprobs, train)
from detoxedit.methods.base import register_method
from detoxedit.methods.dpo_hparams import DPOHyperParams


def dpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, dict]:
    """Mean over pairs of Eq. 7; inputs are per-pair summed response log-probabilities.

    Returns the loss and, for the log, the mean implicit reward margin
    ``beta * [(pw - rw) - (pl - rl)]`` and the fraction of pairs where it is positive.
    """
    margin = beta * ((policy_w - ref_w) - (policy_l - ref_l))
    loss = -F.logsigmoid(margin).mean()
    return loss, {"margin": float(margin.detach().mean()), "accuracy": float((margin > 0).float().mean())}


@register_method("dpo")
class DPO(TrainedEditor):
    """Prefer the safe over the unsafe response of every train case; one edit for every case."""

    hparams_class = DPOHyperParams

    def fit(self, model, tok, cases, progress: bool = False) -> dict:
        hp = self.hparams
        require_responses(cases, "safe", "DPO")
        require_responses(cases, "unsafe", "DPO")
        chosen = [encode(tok, c.prompt, c.safe, hp) for c in cases]
        rejected = [encode(tok, c.prompt, c.unsafe, hp) for c in cases]
        pad = pad_of(tok)
        plan = batches(len(cases), hp.batch_size, hp.epochs, hp.seed, hp.max_steps)
        used = sorted({i for idx in plan for i in idx})  # max_steps may leave cases unread
        ref_w, ref_l = self.reference_logprobs(model, chosen, rejected, pad, used)
        adapter = self._new_adapter(model)
        self._remember_base(model, adapter)

        def step(idx):
            logp, _ = response_logprobs(model, collate([chosen[i] for i in idx] + [rejected[i] for i in idx], pad))
            n = len(idx)
            return dpo_loss(logp[:n], logp[n:], ref_w[idx].to(logp.device), ref_l[idx].to(logp.device), hp.beta)

        log = train(model, adapter, len(cases), step, hp, progress, desc="DPO")
        self.adapters = {"adapter": adapter}
        self.train_log = {"n_cases": len(cases), "dpo": log}
        return self.train_log

    @torch.no_grad()
    def reference_logprobs(self, model, chosen, rejected, pad, used: list[int] | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """``log pi_ref(y_w|x)`` and ``log pi_ref(y_l|x)`` under the frozen base model, for the pairs
        ``used`` (default all; the others stay NaN)."""
        used = list(range(len(chosen))) if used is None else used
        bs = self.hparams.batch_size
        out = []
        for seqs in (chosen, rejected):
            vals = torch.full((len(seqs),), float("nan"))
            for i in range(0, len(used), bs):
                idx = used[i:i + bs]
                logp, _ = response_logprobs(model, collate([seqs[j] for j in idx], pad))
                vals[idx] = logp.float().cpu()
            out.append(vals)
        return out[0], out[1]

    def merged_deltas(self) -> dict[str, torch.Tensor]:
        return self.adapters["adapter"].deltas()
