"""Architecture facts, in one table keyed by ``config.model_type``.

Every piece of code that needs to know where a model keeps its decoder blocks, which matrix is a
block's MLP down-projection (the parameter DINM edits), its final norm or its LM head reads it from
``ARCHITECTURES``. Nothing guesses from a model's name.

To add a family: build a tiny model of it (``AutoModelForCausalLM.from_config``), print
``[n for n, _ in model.named_modules()]``, and add an ``ArchSpec`` row below; ``tests/test_arch.py``
then checks the paths resolve on a tiny random model of every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from detoxedit.errors import DetoxEditError


@dataclass(frozen=True)
class ArchSpec:
    """Where one model family keeps the modules that editing and localisation touch."""

    blocks: str
    """Dotted path of the ``ModuleList`` of decoder blocks."""
    down_proj: str
    """Path of the MLP down-projection *inside a block* (the module, not its weight)."""
    final_norm: str
    """Path of the norm applied after the last block."""
    lm_head: str
    """Path of the output projection to the vocabulary."""
    down_proj_layout: Literal["linear", "conv1d"] = "linear"
    """``linear``: ``nn.Linear`` (weight ``[out, in]``); ``conv1d``: GPT-2's ``Conv1D`` (weight ``[in, out]``).
    Every projection of a family (``attn_proj`` and ``mlp_proj`` too) is stored this way; see
    ``projection_layout``."""
    mlp_out_norm: str | None = None
    """Norm applied to the MLP output before it joins the residual stream (Gemma 2/3's
    ``post_feedforward_layernorm``), relative to the block; None when the MLP output is simply added."""
    attn_proj: tuple[str, ...] = ()
    """Paths of the attention's projection matrices inside a block (query/key/value, fused or not, and
    output); the ``attn`` role that SFT/DPO/Ext-Sub train with LoRA or full fine-tuning."""
    mlp_proj: tuple[str, ...] = ()
    """Paths of the MLP's projection matrices inside a block (gate/up, fused or not, and down); the
    ``mlp`` role. Every path here and in ``attn_proj`` is an ``nn.Linear`` or GPT-2's ``Conv1D``."""


_QKVO = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_GATED_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_LLAMA_LIKE = ArchSpec(blocks="model.layers", down_proj="mlp.down_proj", final_norm="model.norm",
                       lm_head="lm_head", attn_proj=_QKVO, mlp_proj=_GATED_MLP)
_GEMMA = ArchSpec(blocks="model.layers", down_proj="mlp.down_proj", final_norm="model.norm",
                  lm_head="lm_head", mlp_out_norm="post_feedforward_layernorm",
                  attn_proj=_QKVO, mlp_proj=_GATED_MLP)

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "phi3": ArchSpec(blocks="model.layers", down_proj="mlp.down_proj", final_norm="model.norm",
                     lm_head="lm_head", attn_proj=("self_attn.qkv_proj", "self_attn.o_proj"),
                     mlp_proj=("mlp.gate_up_proj", "mlp.down_proj")),
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    # Gemma 3 checkpoints with a vision tower load as Gemma3ForConditionalGeneration.
    "gemma3": ArchSpec(blocks="model.language_model.layers", down_proj="mlp.down_proj",
                       final_norm="model.language_model.norm", lm_head="lm_head",
                       mlp_out_norm="post_feedforward_layernorm", attn_proj=_QKVO, mlp_proj=_GATED_MLP),
    "gpt2": ArchSpec(blocks="transformer.h", down_proj="mlp.c_proj", final_norm="transformer.ln_f",
                     lm_head="lm_head", down_proj_layout="conv1d",
                     attn_proj=("attn.c_attn", "attn.c_proj"), mlp_proj=("mlp.c_fc", "mlp.c_proj")),
    "gptj": ArchSpec(blocks="transformer.h", down_proj="mlp.fc_out", final_norm="transformer.ln_f",
                     lm_head="lm_head",
                     attn_proj=("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"),
                     mlp_proj=("mlp.fc_in", "mlp.fc_out")),
    "gpt_neox": ArchSpec(blocks="gpt_neox.layers", down_proj="mlp.dense_4h_to_h",
                         final_norm="gpt_neox.final_layer_norm", lm_head="lm_head",
                         attn_proj=("attention.query_key_value", "attention.dense"),
                         mlp_proj=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")),
}


def spec_for(model_or_config) -> ArchSpec:
    """The table row for a model (or its config); a clear error for unknown families."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise DetoxEditError(
            f"model_type {model_type!r} is not in detoxedit's architecture table; supported: "
            f"{', '.join(sorted(ARCHITECTURES))}. To add it, add an ArchSpec row to "
            "detoxedit/models/arch.py naming its decoder blocks, MLP down-projection, final norm and LM head "
            "(print the model's named_modules() to find them)."
        ) from None


def get_module(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise DetoxEditError(f"{type(root).__name__} has no module {path!r} (stopped at {part!r})")
        module = getattr(module, part)
    return module


def blocks(model: nn.Module) -> nn.ModuleList:
    return get_module(model, spec_for(model).blocks)


def num_layers(model: nn.Module) -> int:
    return len(blocks(model))


def down_proj(model: nn.Module, layer: int) -> nn.Module:
    """The MLP down-projection module of block ``layer``."""
    n = num_layers(model)
    if not 0 <= layer < n:
        raise DetoxEditError(f"layer {layer} is out of range: the model has {n} blocks (0..{n - 1})")
    return get_module(blocks(model)[layer], spec_for(model).down_proj)


def down_proj_param_name(model: nn.Module, layer: int) -> str:
    """Full parameter name of block ``layer``'s down-projection weight (as in ``named_parameters``)."""
    spec = spec_for(model)
    return f"{spec.blocks}.{layer}.{spec.down_proj}.weight"


def final_norm(model: nn.Module) -> nn.Module:
    return get_module(model, spec_for(model).final_norm)


def lm_head(model: nn.Module) -> nn.Module:
    return get_module(model, spec_for(model).lm_head)


def mlp_out_norm(model: nn.Module, layer: int) -> nn.Module | None:
    path = spec_for(model).mlp_out_norm
    return None if path is None else get_module(blocks(model)[layer], path)


def logit_softcap(model: nn.Module) -> float | None:
    """Gemma 2's final logit soft-capping value (``tanh(x / c) * c``), or None."""
    cfg = model.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap is None and hasattr(cfg, "get_text_config"):
        cap = getattr(cfg.get_text_config(), "final_logit_softcapping", None)
    return float(cap) if cap else None


def projection_layout(model: nn.Module, path: str) -> str:
    """Storage layout of the projection module at ``path`` (a full path, as from ``projection_paths``):
    the family's ``down_proj_layout``, checked against the module's class (``nn.Linear`` for
    ``linear``, GPT-2's ``Conv1D`` for ``conv1d``), with an error naming the table when they disagree."""
    module = get_module(model, path)
    layout = spec_for(model).down_proj_layout
    from transformers.pytorch_utils import Conv1D

    kind = "linear" if isinstance(module, nn.Linear) else "conv1d" if isinstance(module, Conv1D) else None
    if kind is None:
        raise DetoxEditError(f"{path} is a {type(module).__name__}, not a linear projection; "
                             "fix attn_proj/mlp_proj in detoxedit/models/arch.py")
    if kind != layout:
        raise DetoxEditError(f"{path} is a {type(module).__name__} (layout {kind}), but the architecture "
                             f"table says {layout} for model_type {model.config.model_type!r}; fix "
                             "down_proj_layout in detoxedit/models/arch.py")
    return layout


ROLES = ("attn", "mlp")
"""Roles of ``projection_paths``: the attention's and the MLP's projection matrices."""


def projection_paths(model: nn.Module, roles: tuple[str, ...] | list[str] = ROLES,
                     layers: list[int] | None = None) -> list[str]:
    """Full module paths (as in ``named_modules``) of the projection matrices of ``roles`` in ``layers``
    (None: every block), block by block, in table order. What LoRA or full fine-tuning trains."""
    spec = spec_for(model)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise DetoxEditError(f"unknown module role(s) {unknown}; known: {', '.join(ROLES)}")
    rel = [p for r in ROLES if r in roles for p in (spec.attn_proj if r == "attn" else spec.mlp_proj)]
    if not rel:
        raise DetoxEditError(f"the architecture table names no {'/'.join(roles)} projections for "
                             f"model_type {model.config.model_type!r}; add attn_proj/mlp_proj to its row")
    n = num_layers(model)
    chosen = list(range(n)) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise DetoxEditError(f"layer(s) {bad} out of range: the model has {n} blocks (0..{n - 1})")
    paths = [f"{spec.blocks}.{i}.{p}" for i in chosen for p in rel]
    for path in paths:
        get_module(model, path)  # a clear error if the table is wrong for this checkpoint
    return paths
