"""Hyper-parameters of Ext-Sub (Hu et al., AAAI 2024): an expert and an anti-expert LoRA, then
extraction-before-subtraction of the anti-expert's deficiency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from detoxedit.methods._hparams import Dim
from detoxedit.methods.trained_hparams import TrainedHyperParams


@dataclass
class ExtSubHyperParams(TrainedHyperParams):
    """Settings of Ext-Sub. Both LoRAs use the shared training fields (same rank, targets, steps,
    seed, so they start from the same initialisation); ``lora_rank`` must be > 0."""

    METHOD: ClassVar[str] = "Ext-Sub"
    SEARCH_SPACE: ClassVar[tuple[Dim, ...]] = TrainedHyperParams.SEARCH_SPACE + (
        Dim("ext_lambda", "float", 0.25, 2.0),)

    ext_lambda: float = 1.0
    """lambda: the weight of the subtracted deficiency (the paper's alpha/lambda, 1.0 in its runs)."""
    add_expert: bool = True
    """Paper: the result is the expert's delta minus lambda x the deficiency (``theta+ - lambda
    theta-_deficiency``). False: subtract lambda x the deficiency from the base model alone."""

    def validate(self, source: str | None = None) -> None:
        super().validate(source)
        src = source or "Ext-Sub settings"
        try:
            self.ext_lambda = float(self.ext_lambda)
        except (TypeError, ValueError):
            self.fail(src, f"ext_lambda must be a number, not {self.ext_lambda!r}")
        if self.lora_rank < 1:
            self.fail(src, "Ext-Sub operates on LoRA modules: lora_rank must be >= 1")
        if not isinstance(self.add_expert, bool):
            self.fail(src, f"add_expert must be true or false, not {self.add_expert!r}")
