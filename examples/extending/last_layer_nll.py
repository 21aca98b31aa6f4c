"""A per-instance method: tune the last block's MLP down-projection on the safe response's NLL.

It is DINM without localisation and without the KL constraint (L = L_e only), written with the shared
machinery every method uses (``detoxedit.methods.machinery``): the batch, the projector that stands in
for the tuned matrix, and the fast frozen-prefix forward. After this module is imported (or once it is
copied into ``detoxedit/methods/``, where discovery finds it), ``--method last-layer-nll`` works in
``edit`` and ``bench``. See ``docs/extending.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from detoxedit.data.records import SUFFIX_SYSTEM_PROMPT
from detoxedit.errors import DetoxEditError
from detoxedit.methods._hparams import HyperParamsIO
from detoxedit.methods.base import Edit, EditCase, register_method
from detoxedit.methods.machinery import FastForward, Projector, build_batch
from detoxedit.models import arch


@dataclass
class LastLayerNLLHyperParams(HyperParamsIO):
    METHOD: ClassVar[str] = "last-layer-nll"

    num_steps: int = 5
    lr: float = 1e-3
    # read by build_batch and the runner, as for DINM
    suffix_system_prompt: str = SUFFIX_SYSTEM_PROMPT
    max_length: int = 512
    max_output_length: int = 128
    prompt_format: Literal["chat", "raw"] = "chat"

    def validate(self, source: str = "last-layer-nll settings") -> None:
        if self.num_steps < 1 or float(self.lr) <= 0:
            raise DetoxEditError(f"{source}: num_steps must be >= 1 and lr > 0")
        self.lr = float(self.lr)


@register_method("last-layer-nll")
class LastLayerNLL:
    hparams_class = LastLayerNLLHyperParams

    def __init__(self, hparams: LastLayerNLLHyperParams | None = None):
        self.hparams = hparams or LastLayerNLLHyperParams()
        self.hparams.validate()

    def edit(self, model, tok, case: EditCase) -> Edit:
        hp = self.hparams
        layer = arch.num_layers(model) - 1
        w0 = arch.down_proj(model, layer).weight
        weight = w0.detach().float().clone().requires_grad_(True)
        forward = FastForward(model, build_batch(tok, case, hp), layer, Projector.down_proj(model, layer, weight))
        targets = forward.batch.edit_targets.to(w0.device)
        opt = torch.optim.Adam([weight], lr=hp.lr)
        losses = []
        for step in range(hp.num_steps):
            opt.zero_grad()
            edit_logits, _ = forward()  # the knowledge row is not used: no locality term
            loss = F.cross_entropy(edit_logits.float(), targets)
            loss.backward()
            opt.step()
            losses.append({"step": step, "loss": loss.item()})
        name = arch.down_proj_param_name(model, layer)
        delta = weight.detach().to(w0.dtype).float() - w0.detach().float()
        meta = {"method": "last-layer-nll", "case_id": case.case_id, "layer": layer, "param": name,
                "losses": losses, "hparams": dataclasses.asdict(hp)}
        return Edit(method="last-layer-nll", deltas={name: delta.cpu()}, meta=meta)
