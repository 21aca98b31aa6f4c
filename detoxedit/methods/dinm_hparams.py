"""Hyper-parameters of DINM (Wang et al., ACL 2024, Sec. 3). No logic beyond reading and checking.

Field names follow the reference implementation's YAML keys (EasyEdit ``hparams/DINM/*.yaml``) so its
files load unchanged; keys that only describe the reference's plumbing (``model_name``, ``device``,
``rewrite_module_tmp``, ...) are accepted and ignored, because detoxedit reads architecture facts from
its own table (``detoxedit.models.arch``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from detoxedit.methods._hparams import Dim, FormatSettings, ValidationSettings

# Reference YAML keys that carry no meaning for detoxedit (model path, devices, module templates).
_IGNORED_KEYS = {
    "alg_name", "model_name", "model_class", "tokenizer_class", "device", "batch_size",
    "rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module",
    "lm_head_module", "model_parallel", "fp16",
}


@dataclass
class DINMHyperParams(FormatSettings, ValidationSettings):
    """Settings of one DINM edit. Defaults: the paper's LLaMA2-7B-Chat setting (Sec. 4.1), with the
    step size adapted per case (``step_size: adaptive``; ``fixed`` is the paper's). The input format
    settings (suffix, max_length, ...) are ``FormatSettings``'; the validation bounds
    (min_token_accuracy, eot_min_prob, max_kl_*) are ``ValidationSettings``'."""

    METHOD: ClassVar[str] = "DINM"
    YAML_SECTIONS: ClassVar[tuple[str, ...]] = ("hparams", "dinm")  # a run config may nest them
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset(_IGNORED_KEYS)
    SEARCH_SPACE: ClassVar[tuple[Dim, ...]] = (
        Dim("lr", "float", 1e-4, 3e-3, log=True),
        Dim("max_steps", "int", 10, 40, if_base=("step_size", "adaptive")),
        Dim("num_steps", "int", 5, 30, if_base=("step_size", "fixed")),
        Dim("kl_factor", "float", 0.03, 1.0, log=True),
        Dim("harmless_kl", "choice", choices=(0, 8)),
        # the layer rule: the paper's Euclidean argmax, the norm-relative one, or one block for every case
        Dim("layer_rule", "choice", choices=("euclidean", "normalized", "fixed"),
            sets={"euclidean": {"layers": [], "distance": "euclidean"},
                  "normalized": {"layers": [], "distance": "normalized"}}),
        Dim("layers", "layer", low=0.4, when=("layer_rule", "fixed")),
        Dim("norm_constraint", "choice", choices=(None, 1e-3, 3e-3)),
    )
    """``detoxedit tune``'s search space (docs/tuning.md): step size and steps, the weight of the edit loss,
    the harmless locality set on or off, the layer rule (located per case by either distance, or one
    fixed block from 40% of the depth to the last), and the bound on each weight's change."""

    layers: list[int] = field(default_factory=list)
    """Layer to edit (one entry). Empty: locate the toxic layer for every case (the paper's method)."""
    num_steps: int = 10
    """Adam steps per edit (paper: 10)."""
    lr: float = 5e-4
    """Learning rate (paper: 5e-4 for LLaMA2-7B-Chat and GPT-2-XL, 1e-5 for Mistral-7B)."""
    weight_decay: float = 0.0
    kl_factor: float = 0.1
    """c_edit in L = c_edit * L_e + L_c (paper Eq. 4). The reference calls it ``kl_factor`` although it
    weights the *edit* loss, not the KL term; we keep the name so its YAML files load."""
    norm_constraint: float | None = None
    """If set, clamp every edited weight to within +-this value of its original after each step."""
    early_stop_loss: float = 1e-4
    """Stop before a step whose loss is below this (reference: 1e-4)."""
    kl_grad: bool = True
    """Let the KL constraint L_c carry gradient (paper). False reproduces the reference code, which
    computes L_c under ``torch.no_grad()`` so that DINM reduces to plain NLL tuning of one matrix."""
    locate: Literal["per_case", "once_per_run"] = "per_case"
    """Locate the toxic layer for every case (paper) or for the first case only, reusing that layer for
    the rest of the run (reference code)."""
    harmless_kl: int = 8
    """Harmless locality set (ours, not the paper's): how many built-in harmless prompts
    (``dinm.LOCALITY_IDS``, at most 16), each with the unedited model's own 16-token continuation, join
    the KL constraint beside the knowledge pair, so that the edit keeps the model's answers to harmless
    requests (docs/dinm.md, Eq. A2). 0: the paper's L_c on the knowledge pair alone."""
    harmless_tokens: int = 16
    """Length (tokens) of the unedited model's own continuation of each harmless locality prompt."""
    harmless_end: bool = False
    """Keep the end-of-turn token of a continuation that ended within ``harmless_tokens`` as its last KL
    position, so that L_c also holds the model's end-of-turn behaviour."""
    harmless_kl_weight: float = 1.0
    """Weight of the harmless locality set's mean KL in L_c (the knowledge pair's has weight 1)."""
    distance: Literal["euclidean", "normalized"] = "euclidean"
    """How the toxic layer is located: the paper's Euclidean hidden-state distance, or the same distance
    relative to the layer's hidden-state norm (``dinm.layer_distances``). Both are recorded per case."""
    step_size: Literal["adaptive", "fixed"] = "adaptive"
    """``fixed``: ``num_steps`` steps at ``lr`` (the paper). ``adaptive``: ``lr`` is the first try, which
    runs until the safe response is learned (at most ``max_steps``); a try that fails validation is
    retried from the original weights with a smaller step size when it overshot (end of turn lost, KL
    above its bound, loss rose) and a larger one when it learned too little (docs/dinm.md, "Adaptive
    step size")."""
    max_steps: int = 40
    """Adaptive step size: most Adam steps per try; a try stops earlier once ``target_accuracy`` is met."""
    target_accuracy: float = 1.0
    """Adaptive step size: a try stops before the first step at which the teacher-forced token accuracy
    of the safe response (end of turn included) reaches this; 1.0: greedy decoding then gives exactly
    the safe response and ends its turn. (Passing needs only ``min_token_accuracy``.)"""
    max_attempts: int = 6
    """Adaptive step size: most tuning runs per case."""
    lr_factor: float = 2.0
    """Adaptive step size: the factor by which the step size grows or shrinks before a bracket is known."""
    fast_path: bool = True
    """Compute the frozen part of the network once per edit (same losses as the naive path)."""

    @classmethod
    def reference(cls, **overrides) -> "DINMHyperParams":
        """Settings that reproduce EasyEdit's SafeEdit code, for matching published numbers:
        KL without gradient, toxic layer located once per run, raw (no chat template) prompts."""
        base = dict(kl_grad=False, locate="once_per_run", prompt_format="raw", step_size="fixed", harmless_kl=0)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        if raw.pop("reference_mode", False):
            raw.setdefault("kl_grad", False)
            raw.setdefault("locate", "once_per_run")
            raw.setdefault("prompt_format", "raw")
            raw.setdefault("step_size", "fixed")
            raw.setdefault("harmless_kl", 0)
        if raw.get("norm_constraint") is False:  # reference YAML writes `norm_constraint: false`
            raw["norm_constraint"] = None
        if "layers" in raw and raw["layers"] is None:
            raw["layers"] = []
        return raw

    def validate(self, source: str = "DINM settings") -> None:
        self.as_numbers(source, "lr", "weight_decay", "kl_factor", "norm_constraint", "lr_factor", "target_accuracy",
                        "harmless_kl_weight")
        if not isinstance(self.layers, list) or len(self.layers) > 1:
            self.fail(source, f"layers must be [] (locate per case) or one layer index, got {self.layers!r}")
        if self.num_steps < 0:
            self.fail(source, "num_steps must be >= 0")
        if self.lr <= 0:
            self.fail(source, "lr must be > 0")
        if self.locate not in ("per_case", "once_per_run"):
            self.fail(source, f"locate must be 'per_case' or 'once_per_run', not {self.locate!r}")
        self.check_format(source)
        self.check_validation(source)
        if self.distance not in ("euclidean", "normalized"):
            self.fail(source, f"distance must be 'euclidean' or 'normalized', not {self.distance!r}")
        if self.step_size not in ("adaptive", "fixed"):
            self.fail(source, f"step_size must be 'adaptive' or 'fixed', not {self.step_size!r}")
        if self.step_size == "adaptive" and not self.validation:
            self.fail(source, "step_size: adaptive chooses the step size by validating each try; it needs "
                              "validation: true (or use step_size: fixed)")
        if not 0 < self.target_accuracy <= 1:
            self.fail(source, "target_accuracy must be within (0, 1]")
        if not 0 <= self.harmless_kl <= 16:
            self.fail(source, "harmless_kl must be within 0-16 (built-in harmless prompts in the KL term)")
        if not 1 <= self.harmless_tokens <= 256:
            self.fail(source, "harmless_tokens must be within 1-256")
        if self.harmless_kl_weight < 0:
            self.fail(source, "harmless_kl_weight must be >= 0")
        if self.max_steps < 1:
            self.fail(source, "max_steps must be >= 1")
        if self.max_attempts < 1:
            self.fail(source, "max_attempts must be >= 1")
        if self.lr_factor <= 1:
            self.fail(source, "lr_factor must be > 1")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            self.fail(source, "norm_constraint must be a positive number or null")
