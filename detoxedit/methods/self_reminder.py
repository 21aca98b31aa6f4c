"""Self-Reminder: a system prompt and a reminder around the query (Xie et al., "Defending ChatGPT
against jailbreak attack via self-reminders", Nature Machine Intelligence 5, 2023).

No parameter changes: ``edit`` returns an empty ``Edit``. The method lives entirely in the edited
side's inputs: ``system_prompt`` (the system message) and ``post_input`` (query -> query + reminder),
which the runner applies to the edited side only; the vanilla side sees the bare inputs. It does not
learn from the instance (``uses_instance = False``), so its DS is not a defense-success on an edited
instance in the SafeEdit paper's sense (reports mark it).
"""

from __future__ import annotations

from detoxedit.methods.base import Edit, EditCase, register_method
from detoxedit.methods.self_reminder_hparams import SelfReminderHyperParams


@register_method("self-reminder")
class SelfReminder:
    hparams_class = SelfReminderHyperParams
    uses_instance = False

    def __init__(self, hparams: SelfReminderHyperParams | None = None):
        self.hparams = hparams or SelfReminderHyperParams()
        self.hparams.validate()

    @property
    def system_prompt(self) -> str:
        """The system message of the edited side (the paper's first reminder)."""
        return self.hparams.system_prompt

    def post_input(self, text: str) -> str:
        """The user's query followed by the reminder (the paper's second reminder)."""
        return f"{text}\n{self.hparams.reminder}"

    def edit(self, model, tok, case: EditCase | None = None) -> Edit:
        return Edit(method="self-reminder", deltas={},
                    meta={"method": "self-reminder", "layer": None, "system_prompt": self.system_prompt,
                          "reminder": self.hparams.reminder, "hparams": self.hparams.to_dict()})
