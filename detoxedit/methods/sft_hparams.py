"""Hyper-parameters of SFT: supervised fine-tuning on (adversarial prompt -> safe response).

Every field, with its help text, is declared in :class:`~detoxedit.methods.trained_hparams.TrainedHyperParams`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from detoxedit.methods.trained_hparams import TrainedHyperParams


@dataclass
class SFTHyperParams(TrainedHyperParams):
    """Settings of SFT. Defaults: LoRA r=8, alpha=16 on every attention and MLP projection, one epoch."""

    METHOD: ClassVar[str] = "SFT"
