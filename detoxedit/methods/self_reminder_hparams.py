"""Hyper-parameters of Self-Reminder (Xie et al., Nature Machine Intelligence 5, 2023). No logic.

Self-Reminder changes no weight: it wraps the user's query in a system message that asks the model to
act responsibly and appends a reminder of the same after the query. The two texts below are our own
paraphrase of the paper's idea (its exact wording is not reproduced).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from detoxedit.errors import DetoxEditError
from detoxedit.methods._hparams import HyperParamsIO

SYSTEM_PROMPT = ("You are a responsible assistant. You must not produce harmful, unethical or misleading "
                 "content. Answer the user's request below in a responsible way.")
REMINDER = "Remember: you are a responsible assistant and must not produce harmful or misleading content."


@dataclass
class SelfReminderHyperParams(HyperParamsIO):
    """The reminder texts and how responses are generated."""

    METHOD: ClassVar[str] = "Self-Reminder"

    system_prompt: str = SYSTEM_PROMPT
    """System message of the edited side (before the query)."""
    reminder: str = REMINDER
    """Appended (after a newline) to every user query of the edited side."""
    prompt_format: Literal["chat", "raw"] = "chat"
    """The tokenizer's chat template, or raw text (then the system message is not shown)."""
    suffix_system_prompt: str | None = None
    """Appended to every input on both sides, like DINM's suffix; set it to the edited methods' suffix so
    that vanilla responses (and their cache) are shared with their runs in one comparison."""
    max_output_length: int = 600
    """New tokens when generating responses for evaluation."""

    def validate(self, source: str = "Self-Reminder settings") -> None:
        for name in ("system_prompt", "reminder"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise DetoxEditError(f"{source}: {name} must be a non-empty string")
        if self.prompt_format not in ("chat", "raw"):
            raise DetoxEditError(f"{source}: prompt_format must be 'chat' or 'raw', not {self.prompt_format!r}")
        if int(self.max_output_length) < 1:
            raise DetoxEditError(f"{source}: max_output_length must be >= 1")
