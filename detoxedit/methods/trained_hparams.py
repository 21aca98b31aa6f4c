"""Hyper-parameters shared by the methods trained on a split (SFT, DPO, Ext-Sub). No logic beyond
reading and checking; each method's ``*_hparams.py`` subclasses :class:`TrainedHyperParams`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from detoxedit.data.records import SUFFIX_SYSTEM_PROMPT
from detoxedit.methods._hparams import Dim, FormatSettings


@dataclass
class TrainedHyperParams(FormatSettings):
    """Training settings of a method that learns deltas on the projection matrices from a train split."""

    METHOD: ClassVar[str] = "trained method"
    SEARCH_SPACE: ClassVar[tuple[Dim, ...]] = (
        Dim("lr", "float", 5e-5, 2e-3, log=True),
        Dim("lora_rank", "choice", choices=(4, 8, 16)),
        Dim("max_steps", "choice", choices=(8, 16, 32, None)),
    )
    """``detoxedit tune``'s search space for SFT, DPO and Ext-Sub: the learning rate, the LoRA rank and
    the training length (None: ``epochs`` full passes)."""

    lora_rank: int = 8
    """LoRA rank r; 0 = full fine-tuning of the target matrices (the delta is the weight difference)."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator: the merged delta is ``(lora_alpha / lora_rank) B A``."""
    target_roles: list[str] = field(default_factory=lambda: ["attn", "mlp"])
    """Which projections to train, by role in the architecture table: ``attn`` (query/key/value and
    output projections) and/or ``mlp`` (gate/up/down projections)."""
    layers: list[int] | None = None
    """Blocks whose projections are trained; None = every block."""
    epochs: int = 1
    """Passes over the training cases."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (None: ``epochs`` full passes)."""
    lr: float = 2e-4
    """AdamW learning rate (constant)."""
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm of the trained tensors to this (None: no clipping)."""
    batch_size: int = 8
    """Training sequences per optimiser step (a DPO step reads ``batch_size`` preference pairs)."""
    max_length: int = 512
    """Token budget of one training sequence (prompt + response); prompts are cut from the left."""
    suffix_system_prompt: str | None = SUFFIX_SYSTEM_PROMPT
    """Appended (after a space) to every training prompt and, by the runner, to every evaluation input
    (DINM's default, so vanilla responses cached for DINM are reused). None: no suffix."""
    seed: int = 0
    """Seed of the LoRA initialisation and of the per-epoch shuffles."""

    def validate(self, source: str | None = None) -> None:
        source = source or f"{self.METHOD} settings"
        self.as_numbers(source, "lr", "weight_decay", "lora_alpha", "max_grad_norm")
        for name in ("lora_rank", "epochs", "batch_size", "max_length", "max_output_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                self.fail(source, f"{name} must be an integer, not {value!r}")
        if self.lora_rank < 0:
            self.fail(source, "lora_rank must be >= 0 (0 = full fine-tuning)")
        if self.epochs < 1 or self.batch_size < 1:
            self.fail(source, "epochs and batch_size must be >= 1")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            self.fail(source, f"max_steps must be a positive integer or null, not {self.max_steps!r}")
        if self.lr <= 0:
            self.fail(source, "lr must be > 0")
        if self.max_length < 32:
            self.fail(source, "max_length must be at least 32 tokens")
        if isinstance(self.target_roles, str):
            self.target_roles = [self.target_roles]
        bad = [r for r in self.target_roles if r not in ("attn", "mlp")]
        if bad or not self.target_roles:
            self.fail(source, f"target_roles must be a non-empty subset of ['attn', 'mlp'], not {self.target_roles!r}")
        if self.layers is not None and (not isinstance(self.layers, list)
                                        or not all(isinstance(i, int) for i in self.layers)):
            self.fail(source, f"layers must be null or a list of block indices, not {self.layers!r}")
        self.check_format(source)
