"""SFT: supervised fine-tuning on (adversarial prompt -> safe response), the paper's SFT baseline
(Wang et al., ACL 2024, Sec. 4.1), with LoRA or full fine-tuning of the projection matrices.

Objective: the mean negative log-likelihood of the safe-response tokens,
``L = -(1 / sum_i |y_i|) sum_i sum_t log p_theta(y_i,t | x_i + s, y_i,<t)``, over the train split's
cases (x: adversarial input, s: suffix system prompt, y: safe response, chat-formatted; only response
tokens are scored). The trained delta is returned as one ``Edit`` shared by every test case.

Training loop and LoRA are our own (no TRL, no PEFT): see ``detoxedit/methods/_tuning.py`` for why.
"""

from __future__ import annotations

import torch

from detoxedit.methods._tuning import (TrainedEditor, encode, pad_of, require_responses, sft_loss,
                                       train)
from detoxedit.methods.base import register_method
from detoxedit.methods.sft_hparams import SFTHyperParams


@register_method("sft")
class SFT(TrainedEditor):
    """Fine-tune on the train split's (prompt, safe response) pairs; one edit for every case."""

    hparams_class = SFTHyperParams

    def fit(self, model, tok, cases, progress: bool = False) -> dict:
        hp = self.hparams
        require_responses(cases, "safe", "SFT")
        seqs = [encode(tok, c.prompt, c.safe, hp) for c in cases]
        pad = pad_of(tok)
        adapter = self._new_adapter(model)
        self._remember_base(model, adapter)
        log = train(model, adapter, len(seqs), lambda idx: sft_loss(model, [seqs[i] for i in idx], pad),
                    hp, progress, desc="SFT")
        self.adapters = {"adapter": adapter}
        self.train_log = {"n_cases": len(cases), "sft": log}
        return self.train_log

    def merged_deltas(self) -> dict[str, torch.Tensor]:
        return self.adapters["adapter"].deltas()
