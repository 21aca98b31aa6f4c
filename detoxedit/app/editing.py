"""The Edit tab's logic: one edit on one prompt, as ``detoxedit edit`` makes it, as plain functions.

:class:`ModelSession` holds the one model the app edits. It is loaded on the first edit, once (again
only when the page names another model), and a lock serialises its use: an applied edit changes the
weights in place, so two browser tabs must not edit or generate at the same time.

:func:`run_edit` follows ``detoxedit.commands.edit.run`` step by step (same settings resolution, same
preflight checks, same inputs before and after, same choice of the unsafe text) and returns an
:class:`EditOutcome` instead of printing. Every problem a user can cause (an empty prompt, a model path
that does not exist, a method that cannot edit one prompt) is a :class:`~detoxedit.errors.DetoxEditError`
with a sentence the page shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from detoxedit.config import RunConfig
from detoxedit.errors import DetoxEditError

Progress = Callable[..., Any]
"""``progress(fraction, desc=...)``: ``gr.Progress`` in the page, anything callable in tests."""


def no_progress(fraction: float, desc: str | None = None) -> None:
    """The progress callback used when the caller gives none."""


def instance_methods() -> list[str]:
    """The methods that learn from one instance (``dinm``, ``ft-l``, ``mend``): those the Edit tab offers."""
    from detoxedit.methods.base import METHODS, get_method, uses_instance

    return [k for k in METHODS.names() if uses_instance(get_method(k))]


def check_model_spec(spec: str) -> None:
    """Refuse an empty model or a path that does not exist, before anything loads."""
    from detoxedit.models.load import classify_spec

    if not (spec or "").strip():
        raise DetoxEditError("Enter a model: 'default', a hub id, a local checkpoint directory or a .gguf file.")
    classify_spec(spec.strip())


class ModelSession:
    """The model the app edits, loaded lazily and once; ``cfg`` holds the command line's run settings."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.spec: str | None = None
        self.model = None
        self.tok = None
        self.load_s: float | None = None
        self.lock = threading.RLock()

    def loaded(self, spec: str, progress: Progress = no_progress):
        """``(model, tokenizer)`` of ``spec``, loading it first when it is not the one held. The caller
        holds :attr:`lock`."""
        if self.model is not None and self.spec == spec:
            return self.model, self.tok
        from detoxedit.models.load import load_model

        check_model_spec(spec)
        progress(0.1, desc=f"loading {spec} (once; the embedded default model is dequantized on first use, ~20 s)")
        self.model = self.tok = self.spec = None  # let the previous model go before the next one loads
        t0 = time.perf_counter()
        self.model, self.tok = load_model(spec, dtype=self.cfg.dtype, device=self.cfg.device,
                                          device_map=self.cfg.device_map)
        self.spec, self.load_s = spec, time.perf_counter() - t0
        return self.model, self.tok


@dataclass
class EditForm:
    """What the Edit tab's fields hold."""

    prompt: str
    safe: str
    unsafe: str = ""
    method: str = "dinm"
    model: str = ""
    """Empty: the command line's ``--model``."""
    knowledge_prompt: str = ""
    knowledge_answer: str = ""
    layer: int | None = None
    """Edit this layer instead of locating it (``detoxedit edit --layer``)."""

    def check(self) -> None:
        if not (self.prompt or "").strip():
            raise DetoxEditError("Enter a prompt: the adversarial input to edit on.")
        if not (self.safe or "").strip():
            raise DetoxEditError("Enter the safe answer the model should give.")
        if bool((self.knowledge_prompt or "").strip()) != bool((self.knowledge_answer or "").strip()):
            raise DetoxEditError("Give both the knowledge prompt and its answer, or neither.")
        if self.layer is not None and self.layer < 0:
            raise DetoxEditError(f"The layer must be 0 or more, not {self.layer}.")


@dataclass
class EditOutcome:
    """One edit and what it did, for the page and for saving."""

    edit: Any
    """The :class:`~detoxedit.methods.base.Edit`."""
    model: str
    """The model spec the edit was made on (saving the edited model needs it still loaded)."""
    method: str
    before: str
    after: str
    unsafe_source: str
    n_layers: int
    kl_factor: float | None
    """DINM's c in L = c * L_edit + L_kl, to draw c * L_edit beside L_kl; None for other methods."""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def meta(self) -> dict:
        return self.edit.meta

    @property
    def status(self) -> str:
        """``ok``, ``failed`` or ``unchecked`` (a method that reports no validation)."""
        return str((self.meta.get("validation") or {}).get("status") or "unchecked")


def edit_config(base: RunConfig, form: EditForm) -> RunConfig:
    """The run settings of one edit: the command line's, with the page's model and method. The
    command line's ``--method-config`` and ``--hparam`` apply to its own ``--method`` only; another
    method chosen in the page runs with its defaults (the built-in file for the default model), and
    ``--artifact`` goes only to a method that trains."""
    from detoxedit.commands.edit import shortcut_overrides
    from detoxedit.methods.base import get_method, needs_training

    method = (form.method or base.method).strip()
    same = method == base.method
    cfg = dataclasses.replace(base, model=(form.model or "").strip() or base.model, method=method,
                              method_config=base.method_config if same else None,
                              hparams=dict(base.hparams) if same else {},
                              artifact=base.artifact if needs_training(get_method(method)) else None)
    if form.layer is not None:
        shortcut = argparse.Namespace(hparam=None, steps=None, lr=None, layer=int(form.layer), naive=False,
                                      reference=False)
        cfg.hparams.update(shortcut_overrides(shortcut, method))
    return cfg


def run_edit(session: ModelSession, form: EditForm, progress: Progress = no_progress) -> EditOutcome:
    """Edit the session's model on ``form``'s prompt and answer it before and after (the model is left
    as it was: the edit is applied only while the edited answer is generated)."""
    import torch

    from detoxedit.commands.edit import check_method, unsafe_text
    from detoxedit.methods.base import EditCase, edited_side, needs_training
    from detoxedit.models import arch
    from detoxedit.models.generate import GenerationSettings, generate, resolve_format, with_suffix
    from detoxedit.preflight import check_run
    from detoxedit.settings import prepare_method

    form.check()
    progress(0.02, desc="checking the settings")
    cfg = edit_config(session.cfg, form)
    check_model_spec(cfg.model)
    check_method(cfg)
    check_run(cfg, judge=False, splits=())  # method, settings, layer range: before the model loads
    prompt, safe = form.prompt.strip(), form.safe.strip()
    unsafe_given = (form.unsafe or "").strip() or None
    with session.lock:
        torch.manual_seed(cfg.seed)
        method = prepare_method(cfg)
        editor = method.editor
        t0 = time.perf_counter()
        model, tok = session.loaded(cfg.model, progress)
        t_load = time.perf_counter() - t0
        if needs_training(editor):
            progress(0.3, desc="reading the trained artefact")
            editor.load_artifact(Path(cfg.artifact).expanduser())
        fmt = resolve_format(tok, method.prompt_format)
        settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, prompt_format=fmt)
        post_input = with_suffix(prompt, method.suffix)
        pre_input = post_input if cfg.protocol == "fair" else prompt

        progress(0.35, desc="answering before the edit")
        t0 = time.perf_counter()
        inputs = [pre_input] if unsafe_given or pre_input == prompt else [pre_input, prompt]
        outs = generate(model, tok, inputs, settings)
        before = outs[0]
        unsafe, source = unsafe_text(unsafe_given, outs[-1], before if pre_input == post_input != prompt else None)
        t_before = time.perf_counter() - t0

        progress(0.5, desc=f"editing with {cfg.method}")
        case = EditCase(prompt=prompt, safe=safe, unsafe=unsafe, unsafe_source=source,
                        knowledge_prompt=(form.knowledge_prompt or "").strip() or None,
                        knowledge_answer=(form.knowledge_answer or "").strip() or None)
        t0 = time.perf_counter()
        edit = editor.edit(model, tok, case)
        t_edit = time.perf_counter() - t0

        progress(0.85, desc="answering after the edit")
        (edited_input,), post_settings = edited_side(editor, [post_input], settings)  # as in the runner
        t0 = time.perf_counter()
        with edit.applied_to(model):
            after = generate(model, tok, [edited_input], post_settings)[0]
        t_after = time.perf_counter() - t0
        n_layers = arch.num_layers(model)
    progress(1.0, desc="done")
    timings = {"load_s": t_load, "before_s": t_before, "edit_s": t_edit, "after_s": t_after}
    return EditOutcome(edit=edit, model=cfg.model, method=cfg.method, before=before, after=after,
                       unsafe_source=source, n_layers=n_layers,
                       kl_factor=getattr(method.hparams, "kl_factor", None), timings=timings)


STATUS_TEXT = {"ok": "ok", "failed": "FAILED", "unchecked": "unchecked (this method reports no validation)"}


def summary_markdown(o: EditOutcome) -> str:
    """The edit at a glance: validation status and reasons, the checks, the layer, where the unsafe
    text came from, and timings."""
    from detoxedit.commands.edit import validation_lines

    meta = o.meta
    val = meta.get("validation") or {}
    lines = [f"### Validation: {STATUS_TEXT.get(o.status, o.status)}", ""]
    lines += [f"- {reason}" for reason in val.get("reasons") or []]
    details = validation_lines(meta)[1:]  # the first line repeats the status and reasons
    if details:
        lines += ["", "Checks:", ""] + [f"- {line}" for line in details]
    facts = []
    if meta.get("layer") is not None:
        kind = "toxic layer" if meta.get("distances") else "edited layer"
        facts.append(f"**{kind}: {meta['layer']}** of {o.n_layers} (layers 0-{o.n_layers - 1})"
                     + (f"; parameter `{meta['param']}`" if meta.get("param") else ""))
    elif meta.get("layers"):
        facts.append(f"**edited layers:** {', '.join(map(str, meta['layers']))}")
    source = o.unsafe_source
    facts.append(f"unsafe text for localisation: `{source}`")
    if source.startswith("refusal-only"):
        facts.append("the model refused the bare prompt too, so the toxic layer is located between two refusals "
                     "(fill in an unsafe answer to locate against one)")
    if meta.get("steps_run") is not None:
        lr = meta.get("lr")
        facts.append(f"steps: {meta['steps_run']}" + (f", step size {lr:.3g}" if isinstance(lr, (int, float)) else ""))
    t = o.timings
    facts.append(f"timings: model {t['load_s']:.1f} s, before {t['before_s']:.1f} s, edit {t['edit_s']:.1f} s, "
                 f"after {t['after_s']:.1f} s")
    lines += ["", "Edit:", ""] + [f"- {fact}" for fact in facts]
    return "\n".join(lines) + "\n"


def save_edit(outcome: EditOutcome | None, path: str) -> str:
    """Write the edit as ``PATH.safetensors`` + ``PATH.json`` (:meth:`Edit.save`); a sentence saying where."""
    if outcome is None:
        raise DetoxEditError("Make an edit first, then save it.")
    if not (path or "").strip():
        raise DetoxEditError("Enter a path to save the edit to (PATH gives PATH.safetensors and PATH.json).")
    from detoxedit.methods.base import edit_paths

    st = outcome.edit.save(Path(path.strip()).expanduser())
    return f"Edit saved: {st} and {edit_paths(st)[1]}."


def save_model(session: ModelSession, outcome: EditOutcome | None, path: str,
               progress: Progress = no_progress) -> str:
    """Merge the edit into the loaded model and write a checkpoint directory (``save_pretrained``),
    then revert it; a sentence saying where."""
    from detoxedit.methods.base import save_edited_model

    if outcome is None:
        raise DetoxEditError("Make an edit first, then save the edited model.")
    if not (path or "").strip():
        raise DetoxEditError("Enter a directory to save the edited model to.")
    out = Path(path.strip()).expanduser()
    if out.exists() and not out.is_dir():
        raise DetoxEditError(f"{out} is a file; give a directory for the checkpoint.")
    with session.lock:
        if session.model is None or session.spec != outcome.model:
            raise DetoxEditError(f"The model this edit was made on ({outcome.model}) is no longer loaded; "
                                 "make the edit again, then save.")
        progress(0.2, desc="writing the edited model")
        save_edited_model(session.model, session.tok, outcome.edit, out)
    progress(1.0, desc="done")
    return f"Edited model saved: {out} (load it with AutoModelForCausalLM.from_pretrained)."
