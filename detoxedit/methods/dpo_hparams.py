"""Hyper-parameters of DPO (Rafailov et al., NeurIPS 2023) on (prompt, safe preferred over unsafe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from detoxedit.methods._hparams import Dim
from detoxedit.methods.trained_hparams import TrainedHyperParams


@dataclass
class DPOHyperParams(TrainedHyperParams):
    """Settings of DPO; the shared training fields are documented on ``TrainedHyperParams``.

    Defaults: LoRA r=8, alpha=16, beta=0.1 (the paper's usual value), lr 5e-5.
    """

    METHOD: ClassVar[str] = "DPO"
    SEARCH_SPACE: ClassVar[tuple[Dim, ...]] = TrainedHyperParams.SEARCH_SPACE + (
        Dim("beta", "float", 0.03, 1.0, log=True),)

    lr: float = 5e-5
    """AdamW learning rate (constant)."""
    beta: float = 0.1
    """beta of Eq. 7: how strongly the policy may move away from the frozen reference model."""

    def validate(self, source: str | None = None) -> None:
        super().validate(source)
        try:
            self.beta = float(self.beta)
        except (TypeError, ValueError):
            self.fail(source or "DPO settings", f"beta must be a number, not {self.beta!r}")
        if self.beta <= 0:
            self.fail(source or "DPO settings", "beta must be > 0")
