"""The typed configuration of a benchmark run: YAML in, validated, saved into every run directory.

A run is fully described by a ``RunConfig`` plus the method's own hyper-parameters (resolved from the
method's YAML and recorded beside it), so ``detoxedit bench --config RUN_DIR/config.yaml`` repeats it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from detoxedit.errors import DetoxEditError


@dataclass
class RunConfig:
    """Everything that decides what a ``detoxedit bench`` run computes."""

    model: str = "default"
    """'default' (embedded SmolLM2-135M-Instruct), a hub id, a local directory or a .gguf file."""
    dtype: str = "fp32"
    """fp32 | bf16 | fp16 | auto."""
    device: str = "cpu"
    device_map: str | None = None
    """e.g. 'auto' to place a large model across GPUs (then `device` is ignored)."""
    method: str = "dinm"
    """Registry key of the detoxification method (`detoxedit.methods.base.METHODS`)."""
    method_config: str | None = None
    """The method's hyper-parameter YAML; None: the built-in one for the default model, else defaults."""
    hparams: dict[str, Any] = field(default_factory=dict)
    """Overrides applied on top of `method_config` (and the resolved values, once saved in a run)."""
    data: str = "builtin"
    """A SafeEdit file, a directory of split files, 'builtin', or the hub id 'zjunlp/SafeEdit'."""
    split: str = "test"
    limit: int | None = None
    """Only the first N cases (after --cases filtering)."""
    cases: list[str] | None = None
    """Only these case ids."""
    per_category: int | None = None
    """Only the first N cases of each unsafe category (in file order; before --limit)."""
    judge: str = "default"
    """Safety judge spec: default | refusal | classifier:<id or dir> | llm:<model or URL>."""
    protocol: Literal["fair", "paper"] = "fair"
    """fair: vanilla and edited inputs formatted the same (both with the method's suffix);
    paper: the reference's asymmetry (suffix only on edited inputs)."""
    max_new_tokens: int | None = None
    """Tokens generated per response; None: the method's `max_output_length` (paper: 600)."""
    prompt_format: Literal["chat", "raw"] | None = None
    """None: the method's setting (chat template when the tokenizer has one)."""
    batch_size: int = 8
    seed: int = 0
    save_edits: bool = False
    """Also write every case's Edit (safetensors + JSON) under RUN_DIR/edits/."""
    artifact: str | None = None
    """For methods trained on a split first (MEND, SFT, DPO, Ext-Sub): the trained artefact's directory;
    None: RUN_DIR/artifact. Trained there when missing, reused when present."""
    train_split: str = "train"
    """The split such methods learn from (of the same `data`)."""
    train_limit: int | None = None
    """Train on only the first N records of `train_split`."""

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<config>") -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DetoxEditError(f"{source}: unknown run setting(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**raw)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        from detoxedit.configs import read_yaml_mapping

        raw = read_yaml_mapping(path)
        raw.pop("versions", None)  # a saved run config carries the versions it ran with
        return cls.from_dict(raw, str(path))

    def validate(self, source: str = "run config") -> None:
        def bad(msg):
            raise DetoxEditError(f"{source}: {msg}")
        if self.protocol not in ("fair", "paper"):
            bad(f"protocol must be 'fair' or 'paper', not {self.protocol!r}")
        if self.prompt_format not in (None, "chat", "raw"):
            bad(f"prompt_format must be 'chat' or 'raw', not {self.prompt_format!r}")
        if self.dtype not in ("fp32", "bf16", "fp16", "auto"):
            bad(f"dtype must be fp32, bf16, fp16 or auto, not {self.dtype!r}")
        if self.per_category is not None and self.per_category < 1:
            bad("per_category must be >= 1")
        if self.limit is not None and self.limit < 1:
            bad("limit must be >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            bad("max_new_tokens must be >= 1")
        if self.train_limit is not None and self.train_limit < 1:
            bad("train_limit must be >= 1")
        if self.batch_size < 1:
            bad("batch_size must be >= 1")
        if self.cases is not None:
            self.cases = [str(c) for c in self.cases]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> (i, n); None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise DetoxEditError(f"--shard must look like i/n (e.g. 0/4), not {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise DetoxEditError(f"--shard {text}: need 0 <= i < n")
    return i, n
