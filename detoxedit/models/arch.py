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
    """``linear``: ``nn.Linear`` (weight ``[out, in]``); ``conv1d``: GPT-2's ``Conv1D`` (weight ``[in, out]``)."""
    mlp_out_norm: str | None = None
    """Norm applied to the MLP output before it joins the residual stream (Gemma 2/3's
    ``post_feedforward_layernorm``), relative to the block; None when the MLP output is simply added."""


_LLAMA_LIKE = ArchSpec(blocks="model.layers", down_proj="mlp.down_proj", final_norm="model.norm",
                       lm_head="lm_head")
_GEMMA = ArchSpec(blocks="model.layers", down_proj="mlp.down_proj", final_norm="model.norm",
                  lm_head="lm_head", mlp_out_norm="post_feedforward_layernorm")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    # Gemma 3 checkpoints with a vision tower load as Gemma3ForConditionalGeneration.
    "gemma3": ArchSpec(blocks="model.language_model.layers", down_proj="mlp.down_proj",
                       final_norm="model.language_model.norm", lm_head="lm_head",
                       mlp_out_norm="post_feedforward_layernorm"),
    "gpt2": ArchSpec(blocks="transformer.h", down_proj="mlp.c_proj", final_norm="transformer.ln_f",
                     lm_head="lm_head", down_proj_layout="conv1d"),
    "gptj": ArchSpec(blocks="transformer.h", down_proj="mlp.fc_out", final_norm="transformer.ln_f",
                     lm_head="lm_head"),
    "gpt_neox": ArchSpec(blocks="gpt_neox.layers", down_proj="mlp.dense_4h_to_h",
                         final_norm="gpt_neox.final_layer_norm", lm_head="lm_head"),
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
