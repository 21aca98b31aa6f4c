"""Reading and writing a method's hyper-parameters: one implementation for every ``*_hparams.py``.

Each method's settings are a dataclass that subclasses :class:`HyperParamsIO` and defines
``validate(source)``. Unknown keys are refused with the file (or other source) named; keys that only
describe the reference code's plumbing can be listed in ``IGNORED_KEYS`` and are then accepted and dropped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from detoxedit.errors import DetoxEditError


class HyperParamsIO:
    METHOD: ClassVar[str] = "method"
    """The method's name in error messages."""
    YAML_SECTIONS: ClassVar[tuple[str, ...]] = ("hparams",)
    """A YAML file may nest the settings under these keys (tried in order)."""
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Hook: rename or translate keys (e.g. the reference's spellings) before they are checked."""
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>"):
        raw = cls._normalise(dict(raw))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in raw if k not in known and k not in cls.IGNORED_KEYS)
        if unknown:
            raise DetoxEditError(f"{source}: unknown {cls.METHOD} setting(s) {unknown}; known: {sorted(known)}")
        hp = cls(**{k: v for k, v in raw.items() if k in known})
        hp.validate(source)
        return hp

    @classmethod
    def from_yaml(cls, path: str | Path):
        from detoxedit.configs import read_yaml_mapping

        raw = read_yaml_mapping(path)
        for key in cls.YAML_SECTIONS:
            if isinstance(raw.get(key), dict):
                raw = raw[key]
        return cls.from_dict(raw, source=str(path))

    def validate(self, source: str) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
