"""Several cases' edits in one batched forward pass: every batch row sees its own case's weights.

An ``Edit`` (:class:`detoxedit.methods.base.Edit`) changes a few matrices, for DINM, FT-L and MEND the MLP
down-projection of one or a few blocks. To generate the edited answers of K cases together, without
applying any edit to the model, :func:`row_edits` puts a forward hook on every ``nn.Linear`` whose weight
an edit changes. The hook keeps the module's base output for rows of cases that leave the module alone
and recomputes the rows of case k as ``F.linear(x[rows_k], W_k, bias)``, where

    W_k = (W.float() + delta_k).to(W.dtype)

is exactly the tensor ``Edit.apply`` would write into the parameter, so row k computes what the model
with edit k applied computes (up to how the matrix product's summation is blocked for a different number
of rows; see ``tests/test_batched.py``). Cases that edit different layers or parameters share one batch.

Which rows belong to which case: ``models.generate.generate(..., groups=...)`` takes one group id per
prompt and, while it decodes each (length-sorted, left-padded) sub-batch, publishes the group of every
batch row (:func:`detoxedit.models.generate.current_row_groups`). The hooks read it at every forward
call: the prefill and each KV-cached decoding step see the same rows, because greedy decoding never
reorders or drops them. A forward pass with the hooks on and no groups published is an error, never a
silent base-weight answer.

Only a parameter that is the ``weight`` of plain ``nn.Linear`` modules (and of nothing else: a tied
weight used by an embedding is refused) can be edited per row; :func:`row_editable` says why an edit
cannot, and the runner then evaluates that case alone with the edit applied. Inference only.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from detoxedit.errors import DetoxEditError


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(parameter) -> every (module, attribute name) that holds it (a tied weight has several)."""
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for attr, p in module._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((module, attr))
    return out


def _is_plain_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def row_editable(model: nn.Module, edit, owners: dict | None = None) -> str | None:
    """Why ``edit`` cannot be given to batch rows by :func:`row_edits` (None: it can). It can when every
    changed parameter is the ``weight`` of plain ``nn.Linear`` modules only, with its weights in memory
    (not offloaded to the ``meta`` device)."""
    params = dict(model.named_parameters())
    owners = _owners(model) if owners is None else owners
    for name in edit.deltas:
        p = params.get(name)
        if p is None:
            return f"the model has no parameter {name}"
        if p.device.type == "meta":
            return f"{name} is offloaded (meta device)"
        held = owners.get(id(p), [])
        if not held or any(attr != "weight" or not _is_plain_linear(m) for m, attr in held):
            kinds = ", ".join(sorted({f"{type(m).__name__}.{attr}" for m, attr in held})) or "no module"
            return f"{name} is not only an nn.Linear weight ({kinds})"
    return None


def _hook(weights: dict[int, torch.Tensor]):
    """A forward hook for one ``nn.Linear``: rows of group g get ``F.linear(x, weights[g], bias)``."""
    from detoxedit.models.generate import current_row_groups

    def hook(module, args, kwargs, output):
        groups = current_row_groups()
        if groups is None:
            raise DetoxEditError("per-row edits are installed but no row groups are set; run the model "
                                 "through models.generate.generate(..., groups=...)")
        if output.shape[0] != len(groups.ids):
            raise DetoxEditError(f"per-row edits: the batch has {output.shape[0]} rows, the row groups "
                                 f"{len(groups.ids)}")
        x = args[0] if args else kwargs["input"]
        for group, w in weights.items():
            rows = groups.rows(group, output.device)
            if rows is not None:
                bias = None if module.bias is None else module.bias.to(w.device)
                output[rows] = F.linear(x[rows].to(w.device), w, bias).to(output.device, output.dtype)
        return output

    return hook


@contextlib.contextmanager
def row_edits(model: nn.Module, edits: Mapping[int, object]) -> Iterator[None]:
    """``with row_edits(model, {group: edit, ...}): generate(model, tok, prompts, s, groups=...)``: rows of
    ``group`` see the model with ``edit`` applied, rows of any other group id the base model.

    Every edit must pass :func:`row_editable` and the checks ``Edit.apply`` makes (shapes, base
    fingerprints). The edited weights (one copy of each changed matrix per edit, in the parameter's dtype
    and device) live only inside the block; the model's parameters are never written."""
    params = dict(model.named_parameters())
    owners = _owners(model)
    per_module: dict[int, tuple[nn.Module, dict[int, torch.Tensor]]] = {}
    for group, edit in edits.items():
        why = row_editable(model, edit, owners)
        if why is not None:
            raise DetoxEditError(f"edit of group {group} cannot be applied per row: {why}")
        edit.check_fits(params)
        for name, delta in edit.deltas.items():
            p = params[name]
            with torch.no_grad():
                w = edit.edited_weight(p, delta)  # what Edit.apply writes
            for module, _ in owners[id(p)]:
                per_module.setdefault(id(module), (module, {}))[1][int(group)] = w
    handles = [module.register_forward_hook(_hook(weights), with_kwargs=True)
               for module, weights in per_module.values()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
