"""What every detoxification method shares: the case it edits on, the ``Edit`` it returns, a registry.

An ``Edit`` is a small value: the names of the parameters a method changed and a float32 delta for
each. It can be applied to a model and reverted *bit-exactly* (the original tensors are kept while
the edit is applied), saved as safetensors + JSON metadata, and merged into a checkpoint with
``save_pretrained`` that plain transformers loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

from detoxedit.errors import DetoxEditError
from detoxedit.io import atomic_path, atomic_write_json
from detoxedit.registry import Registry

EDIT_FORMAT_VERSION = 1


@dataclass
class EditCase:
    """One instance to edit on (a SafeEdit record reduced to what an editing method reads)."""

    prompt: str
    """The adversarial input (attack template with the harmful question)."""
    safe: str
    """The safe response the model should give."""
    unsafe: str | None = None
    """An unsafe response (used to locate the toxic layer); None: the caller supplies the model's own."""
    knowledge_prompt: str | None = None
    knowledge_answer: str | None = None
    case_id: str | int | None = None
    unsafe_source: str | None = None
    """Where ``unsafe`` came from: ``record`` (the data's unsafe generation), ``given`` (the user's),
    ``generated:<input>`` (the model's own answer to that input: ``attack``, ``attack+suffix``,
    ``question``), or ``refusal-only:<input>`` when every answer the model gave was a refusal, so the
    located layer separates two refusals, not safe from unsafe text."""


def param_fingerprint(t: torch.Tensor) -> str:
    """A short hash of a tensor's bytes, to check an edit is applied to the model it was made on."""
    data = t.detach().to("cpu").contiguous()
    if data.dtype == torch.bfloat16:
        data = data.view(torch.int16)
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]


@dataclass
class Edit:
    """Parameter deltas produced by one editing method on one case (or one training run)."""

    method: str
    deltas: dict[str, torch.Tensor]
    """Parameter name (as in ``model.named_parameters()``) -> float32 delta on CPU."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Method-specific record: layer, per-layer distances, per-step losses, timings, hparams, base model."""
    _backup: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    # --- applying and reverting -------------------------------------------------------------
    @property
    def applied(self) -> bool:
        return self._backup is not None

    def check_fits(self, params: dict[str, torch.Tensor]) -> None:
        """Fail unless ``params`` (``dict(model.named_parameters())``) hold every edited parameter, with the
        delta's shape, and the base weights this edit was made on (its ``base_fingerprints``)."""
        missing = [n for n in self.deltas if n not in params]
        if missing:
            raise DetoxEditError(f"the model has no parameter(s) {missing}; was the edit made on another model?")
        for name, delta in self.deltas.items():
            if tuple(params[name].shape) != tuple(delta.shape):
                raise DetoxEditError(f"{name}: edit delta has shape {tuple(delta.shape)}, "
                                     f"the model's parameter {tuple(params[name].shape)}")
        for name, fp in (self.meta.get("base_fingerprints") or {}).items():
            if name in params and param_fingerprint(params[name]) != fp:
                raise DetoxEditError(f"{name} differs from the weights this edit was made on "
                                     "(another model, dtype, or an edit already merged in)")

    @staticmethod
    def edited_weight(p: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The weight an edit writes for parameter ``p``: ``(p + delta)`` summed in float32, in ``p``'s dtype."""
        return (p.detach().float() + delta.to(p.device)).to(p.dtype)

    def apply(self, model) -> "Edit":
        """Add the deltas to ``model``'s parameters in place; keep the originals for ``revert``."""
        if self._backup is not None:
            raise DetoxEditError("this edit is already applied; revert it first")
        params = dict(model.named_parameters())
        self.check_fits(params)
        backup = {}
        with torch.no_grad():
            for name, delta in self.deltas.items():
                p = params[name]
                backup[name] = p.detach().clone()
                p.copy_(self.edited_weight(p, delta))
        self._backup = backup
        return self

    def revert(self, model) -> None:
        """Restore the exact original tensors (bit for bit)."""
        if self._backup is None:
            raise DetoxEditError("this edit is not applied")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, orig in self._backup.items():
                params[name].copy_(orig)
        self._backup = None

    @contextlib.contextmanager
    def applied_to(self, model) -> Iterator["Edit"]:
        """``with edit.applied_to(model): ...`` applies the edit and reverts it on exit, even on error."""
        self.apply(model)
        try:
            yield self
        finally:
            self.revert(model)

    # --- saving --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``PATH.safetensors`` (deltas) and ``PATH.json`` (metadata), atomically.

        ``path`` may end in ``.safetensors``; the JSON sits beside it with the same stem.
        """
        from safetensors.torch import save_file

        st, js = edit_paths(path)
        st.parent.mkdir(parents=True, exist_ok=True)
        tensors = {n: d.detach().to("cpu", torch.float32).contiguous() for n, d in self.deltas.items()}
        with atomic_path(st) as tmp:
            save_file(tensors, str(tmp), metadata={"method": self.method})
        doc = {"format_version": EDIT_FORMAT_VERSION, "method": self.method,
               "params": list(self.deltas), "meta": self.meta}
        atomic_write_json(js, doc, default=_jsonable)
        return st

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Edit":
        from safetensors.torch import load_file

        st, js = edit_paths(path)
        if not st.is_file():
            raise DetoxEditError(f"edit file {st} does not exist")
        meta = {}
        method = "unknown"
        if js.is_file():
            doc = json.loads(js.read_text())
            meta, method = doc.get("meta", {}), doc.get("method", method)
        return cls(method=method, deltas=load_file(str(st)), meta=meta)


def edit_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def _jsonable(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def save_edited_model(model, tok, edit: Edit, out_dir: str | os.PathLike) -> Path:
    """Merge ``edit`` into ``model`` and write a checkpoint plain transformers can load; then revert.

    Works for the GGUF-derived default model too, because ``load_model`` rebuilds GGUF models as
    ordinary checkpoints.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    edit.apply(model)
    try:
        model.save_pretrained(out)
        tok.save_pretrained(out)
        atomic_write_json(out / "detoxedit_edit.json",
                          {"method": edit.method, "params": list(edit.deltas), "meta": edit.meta},
                          default=_jsonable)
    finally:
        edit.revert(model)
    return out


class Editor(Protocol):
    """A detoxification method. Pure: no printing; file I/O only in ``save_artifact``/``load_artifact``.

    Two optional class attributes tell the runner what kind of method it is:

    * ``uses_instance`` (default True): ``edit`` learns from the case it is given (DINM, FT-L, MEND).
      False: the method returns the same edit for every case (SFT, DPO, Ext-Sub, Self-Reminder), so the
      case may be ``None`` and its DS is not the paper's "defense on the edited instance" (reports mark it).
    * ``needs_training`` (default False): the method first learns on a train split. It then also has

      - ``fit(model, tok, cases: list[EditCase], progress: bool = False) -> dict`` (a training log;
        leaves the model's weights as they were),
      - ``save_artifact(out_dir: Path) -> None`` and ``load_artifact(out_dir: Path) -> None``.

    A method may also set ``system_prompt`` (an attribute, str or None): a system message given to the
    *edited* side only, because it is the method itself (Self-Reminder), not a formatting choice.
    Likewise an optional method ``post_input(text: str) -> str`` rewrites every edited-side user input
    (after the suffix system prompt; e.g. Self-Reminder appends its reminder); the vanilla side and the
    recorded ``inputs`` stay as they were, and the judge sees the rewritten edited-side prompts.

    A per-instance method may also have ``edit_many(model, tok, cases: list[EditCase]) -> list[Edit]``:
    the edits of several cases, in order, equal (up to float rounding) to ``edit`` on each, but computed
    together (DINM trains the cases that edit the same matrix in one batch). The bench runner's groups
    (``batch_cases`` > 1) call it when it exists, else ``edit`` case by case.

    And ``edit_joint(model, tok, cases, batch_cases=8, epochs=None, on_step=None) -> Edit``: *one* edit
    trained on all the cases at once (``detoxedit detox --combine joint``; DINM's joint objective,
    docs/detox.md). Methods without it are refused for ``--combine joint`` before any model work.
    """

    name: str

    def edit(self, model, tok, case: EditCase | None) -> Edit:
        """Return the edit; the model is left exactly as it was."""


def uses_instance(editor) -> bool:
    return bool(getattr(editor, "uses_instance", True))


def needs_training(editor) -> bool:
    return bool(getattr(editor, "needs_training", False))


def edited_side(editor, prompts: Sequence[str], settings):
    """The edited side's prompts and decoding settings: the editor's ``post_input`` applied to every
    prompt and its ``system_prompt`` as the system message (Self-Reminder); unchanged for editors
    without them. The vanilla side never goes through this."""
    post_input = getattr(editor, "post_input", None)
    prompts = [post_input(p) for p in prompts] if post_input is not None else list(prompts)
    system = getattr(editor, "system_prompt", None)
    if system is not None:
        settings = dataclasses.replace(settings, system_prompt=system)
    return prompts, settings


METHODS = Registry("method", "detoxedit.methods")
"""Method key -> editor class (``--method KEY``); every module of ``detoxedit.methods`` is imported on the
first lookup, so a new method is one module that decorates its class with :func:`register_method`."""


def register_method(key: str):
    """Class decorator: make a method available as ``--method KEY`` (and set ``cls.name = KEY``)."""
    return METHODS.register(key, name=key)


def get_method(key: str) -> Callable[..., Editor]:
    return METHODS.get_entry(key)
