"""Hyper-parameters of FT-L (constrained fine-tuning of one MLP layer). No logic beyond reading and checking.

FT-L is the "fine-tune one layer with an L-infinity norm constraint" baseline of ROME (Meng et al.,
NeurIPS 2022, Sec. 3), which the SafeEdit paper (Wang et al., ACL 2024, Table 1) runs on single
instances. The input-formatting fields (``prompt_format``, ``suffix_system_prompt``, ``max_length``,
``max_output_length``) mean exactly what they mean for DINM, so the runner formats inputs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from detoxedit.methods._hparams import Dim, FormatSettings, ValidationSettings

# EasyEdit/ROME YAML keys that only describe their plumbing (paths, devices, module templates).
_IGNORED_KEYS = {
    "alg_name", "model_name", "model_class", "tokenizer_class", "device", "batch_size",
    "rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module",
    "lm_head_module", "model_parallel", "fp16", "kl_factor", "objective_optimization",
}


@dataclass
class FTLHyperParams(FormatSettings, ValidationSettings):
    """Settings of one FT-L edit. Defaults: ROME's FT-L setting (25 Adam steps, lr 5e-4, eps 5e-4)."""

    METHOD: ClassVar[str] = "FT-L"
    YAML_SECTIONS: ClassVar[tuple[str, ...]] = ("hparams", "ft-l", "ft_l")
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset(_IGNORED_KEYS)
    SEARCH_SPACE: ClassVar[tuple[Dim, ...]] = (
        Dim("layers", "layer", low=0.0),
        Dim("lr", "float", 1e-4, 1e-2, log=True),
        Dim("num_steps", "int", 5, 40),
        Dim("norm_constraint", "float", 1e-4, 1e-2, log=True),
    )
    """``detoxedit tune``'s search space: the tuned block, the step size and steps, the L-infinity bound."""

    layers: list[int] = field(default_factory=lambda: [0])
    """The block whose MLP down-projection is tuned (one entry). Used when ``layer_selection`` is
    ``configured``; ignored (and replaced by the traced layer in the edit's meta) for ``causal_trace``."""
    layer_selection: Literal["configured", "causal_trace"] = "configured"
    """``configured``: edit ``layers[0]``. ``causal_trace``: per case, the layer whose MLP output has the
    largest indirect effect on the model's own response (Meng et al. 2022, Sec. 2.1)."""
    num_steps: int = 25
    """Adam steps per edit."""
    lr: float = 5e-4
    weight_decay: float = 0.0
    """L2 weight decay on the full tuned matrix (Adam's coupled form)."""
    norm_constraint: float | None = 5e-4
    """After every step, clamp each weight to within +-this of its original value (L-infinity ball).
    None: unconstrained fine-tuning (FT)."""
    trace_noise: float = 3.0
    """Causal tracing: noise std as a multiple of the prompt embeddings' std (Meng et al.: 3)."""
    trace_samples: int = 5
    """Causal tracing: noise draws averaged per measurement (Meng et al. use 10)."""
    trace_tokens: int = 16
    """Causal tracing: tokens of the model's own greedy response whose log-probability is traced."""
    seed: int = 0
    """Seed of the causal-tracing noise (a case gives the same trace every time)."""

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        if raw.get("norm_constraint") is False:  # ROME/EasyEdit YAML writes `norm_constraint: false`
            raw["norm_constraint"] = None
        return raw

    def validate(self, source: str = "FT-L settings") -> None:
        self.as_numbers(source, "lr", "weight_decay", "norm_constraint", "trace_noise")
        if self.layer_selection not in ("configured", "causal_trace"):
            self.fail(source, f"layer_selection must be 'configured' or 'causal_trace', not {self.layer_selection!r}")
        if not isinstance(self.layers, list) or len(self.layers) > 1 or \
                (self.layer_selection == "configured" and len(self.layers) != 1):
            self.fail(source, f"layers must hold one layer index (FT-L tunes one layer), got {self.layers!r}")
        if self.num_steps < 0:
            self.fail(source, "num_steps must be >= 0")
        if self.lr <= 0:
            self.fail(source, "lr must be > 0")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            self.fail(source, "norm_constraint must be a positive number or null")
        self.check_format(source)
        self.check_validation(source)
        if self.trace_samples < 1 or self.trace_tokens < 1 or self.trace_noise <= 0:
            self.fail(source, "trace_samples and trace_tokens must be >= 1 and trace_noise > 0")
