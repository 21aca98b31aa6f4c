"""Reading and writing a method's hyper-parameters: one implementation for every ``*_hparams.py``.

Each method's settings are a dataclass that subclasses :class:`HyperParamsIO` and defines
``validate(source)``. Unknown keys are refused with the file (or other source) named; keys that only
describe the reference code's plumbing can be listed in ``IGNORED_KEYS`` and are then accepted and dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from detoxedit.data.records import SUFFIX_SYSTEM_PROMPT
from detoxedit.errors import DetoxEditError


@dataclass(frozen=True)
class Dim:
    """One dimension of a method's search space for ``detoxedit tune`` (``SEARCH_SPACE`` on each method's
    hyper-parameter dataclass; ``detoxedit.tune.space`` turns it into Optuna suggestions).

    ``kind``: ``float`` / ``int`` (``low``..``high``, ``log`` scale optional), ``choice`` (``choices``),
    or ``layer``: one block index from ``low`` (a fraction of the depth: 0.5 = the middle block) to the
    last block, assigned as ``[index]`` (the ``layers`` fields take a list). A ``choice`` may set other
    fields instead of its own name: ``sets[choice]`` is the ``{field: value}`` it assigns (a choice with
    no entry assigns nothing). ``when=(dim, value)``: only sampled when that other dimension took that
    value. ``if_base=(field, value)``: only part of the space when the starting settings have that value
    (e.g. ``max_steps`` only matters with ``step_size: adaptive``).
    """

    name: str
    kind: Literal["float", "int", "choice", "layer"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    sets: dict[str, dict[str, Any]] | None = None
    when: tuple[str, Any] | None = None
    if_base: tuple[str, Any] | None = None


class HyperParamsIO:
    METHOD: ClassVar[str] = "method"
    """The method's name in error messages."""
    YAML_SECTIONS: ClassVar[tuple[str, ...]] = ("hparams",)
    """A YAML file may nest the settings under these keys (tried in order)."""
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset()
    SEARCH_SPACE: ClassVar[tuple[Dim, ...]] = ()
    """What ``detoxedit tune`` searches over (:class:`Dim`); empty: nothing to tune."""

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Hook: rename or translate keys (e.g. the reference's spellings) before they are checked."""
        return raw

    @classmethod
    def check_keys(cls, raw: dict[str, Any], source: str) -> None:
        """Refuse keys that are neither settings nor accepted-and-ignored (after ``_normalise``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in cls._normalise(dict(raw)) if k not in known and k not in cls.IGNORED_KEYS)
        if unknown:
            raise DetoxEditError(f"{source}: unknown {cls.METHOD} setting(s) {unknown}; known: {sorted(known)}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>"):
        cls.check_keys(raw, source)
        raw = cls._normalise(dict(raw))
        known = {f.name for f in dataclasses.fields(cls)}
        hp = cls(**{k: v for k, v in raw.items() if k in known})
        hp.validate(source)
        return hp

    @classmethod
    def read_yaml(cls, path: str | Path) -> dict[str, Any]:
        """The settings mapping of a YAML file, unwrapped from a ``YAML_SECTIONS`` key when nested."""
        from detoxedit.configs import read_yaml_mapping

        raw = read_yaml_mapping(path)
        for key in cls.YAML_SECTIONS:
            if isinstance(raw.get(key), dict):
                raw = raw[key]
        return raw

    @classmethod
    def from_yaml(cls, path: str | Path):
        return cls.from_dict(cls.read_yaml(path), source=str(path))

    def validate(self, source: str) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @staticmethod
    def fail(source: str, msg: str):
        """Refuse a setting: ``DetoxEditError("SOURCE: MSG")``."""
        raise DetoxEditError(f"{source}: {msg}")

    def as_numbers(self, source: str, *names: str) -> None:
        """Make the named settings floats (None stays None): YAML 1.1 reads ``5e-4`` (no dot) as a string."""
        try:
            for name in names:
                value = getattr(self, name)
                if value is not None:
                    setattr(self, name, float(value))
        except (TypeError, ValueError) as err:
            self.fail(source, f"{', '.join(names[:-1])} and {names[-1]} must be numbers ({err})"
                      if len(names) > 1 else f"{names[0]} must be a number ({err})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FormatSettings(HyperParamsIO):
    """How a method's inputs are formatted and how long its evaluation answers are: the settings DINM,
    FT-L, MEND and the trained methods share (``machinery.build_batch`` and the runner read them)."""

    suffix_system_prompt: str | None = SUFFIX_SYSTEM_PROMPT
    """SafeEdit's suffix system prompt, appended (after a space) to the adversarial input, the knowledge
    prompt and every evaluation input. None: no suffix."""
    max_length: int = 1000
    """Token budget of one training sequence (prompt + response); prompts are cut from the left."""
    max_output_length: int = 600
    """New tokens when generating responses for evaluation (paper: 600; 300 for GPT-2-XL)."""
    prompt_format: Literal["chat", "raw"] = "chat"
    """How inputs are formatted: the tokenizer's chat template, or raw text as the reference does."""

    def check_format(self, source: str) -> None:
        if self.prompt_format not in ("chat", "raw"):
            self.fail(source, f"prompt_format must be 'chat' or 'raw', not {self.prompt_format!r}")


@dataclass
class ValidationSettings(HyperParamsIO):
    """Bounds of edit validation (``detoxedit.methods.validation``), shared by the per-instance methods'
    settings (DINM, FT-L, MEND; ``docs/dinm.md``, "Validation")."""

    validation: bool = True
    """Check every edit (a few forward passes) and record the result in its meta."""
    min_token_accuracy: float = 0.9
    """(a) Least teacher-forced token accuracy of the safe response for the edit to count as learned."""
    eot_min_prob: float = 0.5
    """(b) The end-of-turn token after the safe response must keep probability >= min(before, this)."""
    max_kl_knowledge: float = 0.5
    """(c) Largest mean KL(p_W0 || p_W) (nats per token) allowed on the knowledge pair's answer."""
    max_kl_harmless: float = 0.5
    """(c) Largest mean KL allowed on the harmless probe prompts (``validation.PROBE_IDS``)."""

    def check_validation(self, source: str) -> None:
        self.as_numbers(source, "min_token_accuracy", "eot_min_prob", "max_kl_knowledge", "max_kl_harmless")
        if not 0 <= self.min_token_accuracy <= 1:
            self.fail(source, "min_token_accuracy must be within [0, 1]")
        if not 0 < self.eot_min_prob <= 1:
            self.fail(source, "eot_min_prob must be within (0, 1]")
        if self.max_kl_knowledge < 0 or self.max_kl_harmless < 0:
            self.fail(source, "max_kl_knowledge and max_kl_harmless must be >= 0")
