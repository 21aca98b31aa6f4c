"""Ext-Sub: Extraction-before-Subtraction (Hu et al., AAAI 2024, "Separate the Wheat from the Chaff:
Model Deficiency Unlearning via Parameter-Efficient Module Operation"). Uses no instance (no DS).

1. Train an **expert** LoRA on (adversarial prompt -> safe response) and an **anti-expert** LoRA on
   (adversarial prompt -> unsafe response) of the train split (same rank, targets, initialisation).
2. Merge each into a full delta per projection matrix, ``W+ = (a/r) B+ A+`` and ``W- = (a/r) B- A-``
   (``[out, in]``).
3. **Extract** the anti-expert's deficiency: row by row (output unit i), the part of ``W-_i`` shared
   with the expert lies along the normalised bisector of the two rows,
   ``c_i = (u+_i + u-_i) / ||u+_i + u-_i||`` with ``u_i = W_i / ||W_i||``; the common part is the
   projection ``(W-_i . c_i) c_i`` and the deficiency is what is left,
   ``D_i = W-_i - (W-_i . c_i) c_i``.
4. **Subtract**: the edit is ``W+ - lambda D`` (the paper's ``theta+ - lambda theta-_deficiency``;
   ``add_expert: false`` gives ``-lambda D`` on the base model alone).

The anti-expert is thus not negated whole: what it shares with the expert (language modelling,
following the instruction format) is kept, and only its direction-specific deficiency is removed.

Training loop and LoRA are our own (no TRL, no PEFT): see ``detoxedit/methods/_tuning.py`` for why.
"""

from __future__ import annotations

import torch

from detoxedit.methods._tuning import TrainedEditor, encode, pad_of, require_responses, sft_loss, train
from detoxedit.methods.base import register_method
from detoxedit.methods.ext_sub_hparams import ExtSubHyperParams
from detoxedit.methods.machinery import to_param_layout

_EPS = 1e-12


def extract_deficiency(expert: torch.Tensor, anti: torch.Tensor) -> torch.Tensor:
    """The anti-expert's deficiency ``D`` (step 3 above): ``anti`` minus, row by row, its projection on
    the normalised bisector of the expert's and the anti-expert's rows. Both are ``[out, in]`` float32.

    A zero row contributes no direction (its unit vector is taken as zero), so a zero anti-expert row
    gives a zero deficiency row and a zero expert row makes the bisector the anti-expert's own
    direction (deficiency zero there: nothing distinguishes it from a shared feature).
    """
    u_pos = expert / expert.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    u_neg = anti / anti.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    common = u_pos + u_neg
    common = common / common.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    shared = (anti * common).sum(-1, keepdim=True) * common
    return anti - shared


def ext_sub(expert: torch.Tensor, anti: torch.Tensor, lam: float, add_expert: bool = True) -> torch.Tensor:
    """``W+ - lambda D`` (paper) or ``-lambda D`` (``add_expert=False``), ``[out, in]``."""
    out = -lam * extract_deficiency(expert, anti)
    return expert + out if add_expert else out


@register_method("ext-sub")
class ExtSub(TrainedEditor):
    """Expert and anti-expert LoRAs on the train split; one edit (expert minus extracted deficiency)."""

    hparams_class = ExtSubHyperParams

    def fit(self, model, tok, cases, progress: bool = False) -> dict:
        hp = self.hparams
        require_responses(cases, "safe", "Ext-Sub")
        require_responses(cases, "unsafe", "Ext-Sub")
        pad = pad_of(tok)
        self.adapters, self.train_log = {}, {"n_cases": len(cases)}
        for key, attr in (("expert", "safe"), ("anti_expert", "unsafe")):
            seqs = [encode(tok, c.prompt, getattr(c, attr), hp) for c in cases]
            adapter = self._new_adapter(model)
            self._remember_base(model, adapter)
            self.train_log[key] = train(model, adapter, len(seqs),
                                        lambda idx, seqs=seqs: sft_loss(model, [seqs[i] for i in idx], pad),
                                        hp, progress, desc=f"Ext-Sub {key}")
            self.adapters[key] = adapter
        return self.train_log

    def merged_deltas(self) -> dict[str, torch.Tensor]:
        hp = self.hparams
        expert, anti = self.adapters["expert"], self.adapters["anti_expert"]
        out = {}
        for t_pos, t_neg in zip(expert.targets, anti.targets):
            w = ext_sub(expert.merged(t_pos).cpu(), anti.merged(t_neg).cpu(), hp.ext_lambda, hp.add_expert)
            out[t_pos.param] = to_param_layout(w, t_pos.layout)
        return out
