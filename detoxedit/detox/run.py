"""``detoxedit detox``: the edits of N cases combined into one model, saved as a checkpoint (docs/detox.md).

Two ways to combine (``--combine``):

* ``sequential`` (any per-instance method: DINM, FT-L, MEND): case k is edited on the model as the kept
  edits of cases 1..k-1 left it, with the method's own ``edit`` (DINM locates the toxic layer again on that
  model). Each edit is validated twice, as ``bench`` validates it: the method's checks
  (``edit.meta["validation"]``) and the greedy answer to the edited input, which the judge must call
  safe and which must end its turn (:func:`detoxedit.bench.records.validate_answer`). An edit that fails
  is reverted and skipped, and the record says why; the others stay applied.
* ``joint`` (editors with the optional ``edit_joint``; DINM: :func:`detoxedit.methods.dinm.joint_edit`):
  one delta trained on all N cases at once on the layer located most often, then every case validated
  the same two ways on it. No case can be dropped from a shared delta: the run reports how many pass.

Every argument is checked before any model work (:func:`plan_detox`). Layout of the output directory::

    DIR/detox.yaml        what the run is (settings, the selected case ids); other settings are refused
    DIR/progress.jsonl    sequential: one line per finished case (kept or skipped, and why)
    DIR/edits/            sequential: every kept edit (NNNN-case-ID.safetensors + .json), written before its
                          progress line; joint: joint.safetensors (+ .json), the trained delta
    DIR/detox-edit.*      the combined delta (detoxified minus base weights, float32; an ``Edit``)
    DIR/summary.json      the run's summary (also DIR/model/detoxedit_detox.json)
    DIR/model/            the checkpoint (config, safetensors, tokenizer, README.md model card)

A killed run resumes with the same command: sequential replays the kept edits in order (each edit
carries the fingerprint of the weights it was made on, so a replay that does not match fails) and goes
on with the next case; joint reuses a trained delta it saved, else trains again. The checkpoint is
written into a temporary directory and renamed into place (:func:`detoxedit.detox.card.write_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detoxedit.config import RunConfig
from detoxedit.errors import DetoxEditError

log = logging.getLogger(__name__)

COMBINES = ("sequential", "joint")
STATE_FILE = "detox.yaml"
PROGRESS_FILE = "progress.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_DIR = "model"
EDIT_FILE = "detox-edit"
"""The combined delta's stem in DIR (``detox-edit.safetensors`` + ``.json``)."""
DEFAULT_JOINT_BATCH = 8


@dataclass
class DetoxOptions:
    """How the cases' edits are combined (the settings ``detox`` adds to a ``RunConfig``)."""

    combine: str = "sequential"
    """``sequential`` or ``joint`` (see the module docstring)."""
    joint_batch: int = DEFAULT_JOINT_BATCH
    """joint: cases per optimizer step (mini-batch); N or more: every step is an exact step on Eq. J1."""
    joint_epochs: int | None = None
    """joint: passes over the cases (default: the method's max_steps, or num_steps with a fixed step size)."""

    def check(self) -> None:
        if self.combine not in COMBINES:
            raise DetoxEditError(f"--combine must be one of {', '.join(COMBINES)}, not {self.combine!r}")
        if self.joint_batch < 1:
            raise DetoxEditError("--joint-batch must be >= 1")
        if self.joint_epochs is not None and self.joint_epochs < 1:
            raise DetoxEditError("--joint-epochs must be >= 1")


def supports_joint(editor_cls) -> bool:
    """A method supports ``--combine joint`` when its editor has the optional ``edit_joint`` method of the
    editor protocol (:class:`detoxedit.methods.base.Editor`; DINM's: :meth:`DINM.edit_joint`)."""
    return callable(getattr(editor_cls, "edit_joint", None))


# --------------------------------------------------------------------------------------------------
# Before any model work
# --------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """What :func:`plan_detox` found: the resolved settings, the cases, and the state of the out dir."""

    cfg: RunConfig
    options: DetoxOptions
    out: Path
    chosen: list[tuple[int, Any]]
    """``(index in the split, record)`` of the cases to edit, in order."""
    source: str
    identity: dict
    finished: bool
    """DIR holds this run, finished (its checkpoint is written)."""


def plan_detox(cfg: RunConfig, options: DetoxOptions, out: str | Path) -> Plan:
    """Check everything a detox run names, without loading a model; one clear error per problem.

    The method (known, learns from the instance, trained artefact present when it needs one, implements
    ``joint`` when asked), its settings, the data and split, the judge, the configured layers
    (``preflight.check_run``), the selection (not empty; ``--limit`` not larger than the cases there are;
    every case has a safe response), and the out directory (empty, missing, or holding this same run).
    ``cfg`` gets the method's resolved settings (``settings.prepare_method``)."""
    from detoxedit.cases import select_records, to_edit_case
    from detoxedit.data.load import load_split, split_source
    from detoxedit.methods.base import get_method, uses_instance
    from detoxedit.preflight import check_artifact, check_run
    from detoxedit.settings import prepare_method

    options.check()
    cls = get_method(cfg.method)  # an unknown method fails here, listing the known ones
    if not uses_instance(cls):
        raise DetoxEditError(f"method {cfg.method!r} does not learn from an instance (it makes one edit for "
                             "every case), so there are no per-case edits to combine; detox takes dinm, ft-l "
                             "or mend")
    check_artifact(cfg.method, cls, cfg.artifact)
    if options.combine == "joint" and not supports_joint(cls):
        raise DetoxEditError(f"method {cfg.method!r} does not implement --combine joint (one delta trained on "
                             "all cases); use --combine sequential, or --method dinm")
    check_run(cfg, judge=True, splits=[cfg.split])  # settings, data, judge, layers
    records = load_split(cfg.data, cfg.split)
    available = select_records(records, dataclasses.replace(cfg, limit=None))
    if cfg.limit is not None and cfg.limit > len(available):
        where = " after --cases/--per-category" if (cfg.cases or cfg.per_category) else ""
        raise DetoxEditError(f"--limit {cfg.limit} is larger than the {len(available)} cases of split "
                             f"{cfg.split!r} of {cfg.data}{where}")
    chosen = select_records(records, cfg)
    if cfg.cases is not None:  # edited in the order --cases lists them: a sequential run on the first k of
        rank = {c: k for k, c in enumerate(cfg.cases)}  # another run's list reuses its first k edits
        chosen.sort(key=lambda pair: rank[str(pair[1].id)])
    if not chosen:
        raise DetoxEditError(f"no case selected from split {cfg.split!r} of {cfg.data}")
    source = split_source(cfg.data, cfg.split)
    for index, record in chosen:  # every case has a safe response to edit on
        to_edit_case(record, source, index)
    method = prepare_method(cfg)  # the resolved settings go into cfg (and detox.yaml)
    identity = run_identity(cfg, options, method, [str(r.id) for _, r in chosen])
    out = Path(out).expanduser()
    return Plan(cfg, options, out, chosen, source, identity, finished=_check_out_dir(out, identity))


def run_identity(cfg: RunConfig, options: DetoxOptions, method, case_ids: list[str]) -> dict:
    """What makes two detox runs the same run (a rerun may resume it): the model, method and its resolved
    settings, data, cases, judge, decoding and combine settings. Devices and batch sizes are left out."""
    import yaml

    ident = {"model": cfg.model, "dtype": cfg.dtype, "method": cfg.method, "method_config": cfg.method_config,
             "hparams": cfg.hparams, "artifact": cfg.artifact, "data": cfg.data, "split": cfg.split,
             "case_ids": case_ids, "judge": cfg.judge, "protocol": cfg.protocol,
             "max_new_tokens": method.max_new_tokens, "prompt_format": method.prompt_format, "seed": cfg.seed,
             "combine": options.combine}
    if options.combine == "joint":
        ident.update(joint_batch=options.joint_batch, joint_epochs=options.joint_epochs)
    return yaml.safe_load(yaml.safe_dump(ident))  # as it reads back from detox.yaml


def _check_out_dir(out: Path, identity: dict) -> bool:
    """Refuse an out dir that holds something else; True when it holds this run, finished."""
    import yaml

    if out.exists() and not out.is_dir():
        raise DetoxEditError(f"--out {out} is a file; give a directory")
    if not out.is_dir():
        return False
    state = out / STATE_FILE
    if not state.is_file():
        if any(out.iterdir()):
            raise DetoxEditError(f"--out {out} is not empty and holds no detox run; use another directory")
        return False
    old = (yaml.safe_load(state.read_text()) or {}).get("identity", {})
    diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
    if diff:
        raise DetoxEditError(f"--out {out} holds another detox run (it differs in: {', '.join(diff)}); use "
                             "another directory, or the same command to resume it")
    return (out / MODEL_DIR / "config.json").is_file() and (out / SUMMARY_FILE).is_file()


def _write_state(plan: Plan) -> None:
    import yaml

    from detoxedit.config import versions
    from detoxedit.io import atomic_write_text

    path = plan.out / STATE_FILE
    if path.is_file():
        return
    doc = {"identity": plan.identity, "run_config": plan.cfg.to_dict(),
           "options": dataclasses.asdict(plan.options), "versions": versions()}
    atomic_write_text(path, "# detoxedit detox run: a rerun of the same command resumes it\n"
                      + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
@dataclass
class _Case:
    """One case: its place, record, ``EditCase`` and the prompts of its answer check."""

    position: int
    index: int
    record: Any
    case: Any
    vanilla_prompt: str
    edited_prompt: str
    vanilla: str = ""


@dataclass
class _Context:
    model: Any
    tok: Any
    method: Any
    judge: Any
    cfg: RunConfig
    settings: Any
    post_settings: Any
    out: Path
    applied: list = field(default_factory=list)
    """The edits applied to the model, in order (reverted in reverse order when the run ends)."""
    base: dict = field(default_factory=dict)
    """Parameter name -> its base value, for every parameter an edit was applied to."""

    def apply(self, edit) -> None:
        """Apply ``edit`` to the model, noting the base value of each parameter it touches first."""
        params = dict(self.model.named_parameters())
        for name in edit.deltas:
            if name not in self.base and name in params:
                self.base[name] = params[name].detach().clone()
        edit.apply(self.model)


def run_detox(cfg: RunConfig, options: DetoxOptions, out: str | Path, progress: bool = True,
              loaded: tuple | None = None, judge=None, reuse_from: str | Path | None = None) -> dict:
    """Run (or resume) a detox run and return its summary (see the module docstring).

    ``loaded``: ``(model, tokenizer)`` already loaded for ``cfg`` (the model is left as it was: every edit
    applied here is reverted when the run ends, also on error); ``judge``: a judge object instead of
    ``cfg.judge``'s (tests). ``reuse_from``: sequential only, another detox run directory with the same
    settings whose cases begin like this run's (e.g. the run on the first N/2 cases): its finished cases
    are copied in before the first case is edited, and replayed like a resume, so a sequential curve over
    growing N edits each case once (:func:`seed_from`). A run that fails before its first finished case
    removes the out directory it created."""
    import json

    plan = plan_detox(cfg, options, out)
    if plan.finished:
        log.info("%s holds this detox run, finished; nothing to do", plan.out)
        return json.loads((plan.out / SUMMARY_FILE).read_text())
    existed = plan.out.exists()
    plan.out.mkdir(parents=True, exist_ok=True)
    try:
        _write_state(plan)
        if reuse_from is not None and plan.options.combine == "sequential":
            seed_from(plan, Path(reuse_from))
        return _run(plan, progress, loaded, judge)
    except BaseException:
        if not existed and not (plan.out / PROGRESS_FILE).exists() and not (plan.out / "edits").exists():
            shutil.rmtree(plan.out, ignore_errors=True)
        raise


def seed_from(plan: Plan, other: Path) -> int:
    """Copy the finished cases of the sequential detox run in ``other`` that this run would do first
    (same settings but the case list, and the same first case ids) into ``plan.out``, when it has no
    progress yet; returns how many. The copied edits replay like a resume's (each checks the fingerprint
    of the weights it was made on), so a copy that does not fit fails there, not silently."""
    import yaml

    from detoxedit.io import atomic_write_jsonl, read_jsonl
    from detoxedit.methods.base import edit_paths

    mine = plan.out / PROGRESS_FILE
    if mine.exists() or not (other / STATE_FILE).is_file() or not (other / PROGRESS_FILE).is_file():
        return 0
    theirs = (yaml.safe_load((other / STATE_FILE).read_text()) or {}).get("identity", {})
    same = {k: v for k, v in theirs.items() if k != "case_ids"} == \
        {k: v for k, v in plan.identity.items() if k != "case_ids"}
    if not same or theirs.get("combine") != "sequential":
        raise DetoxEditError(f"{other} is not a sequential detox run with this run's settings; cannot reuse it")
    ids = plan.identity["case_ids"]
    lines = read_jsonl(other / PROGRESS_FILE)[0]
    k = 0
    while k < len(lines) and k < len(ids) and lines[k].get("case_id") == ids[k] == theirs["case_ids"][k]:
        k += 1
    for rec in lines[:k]:
        if rec["status"] == "kept":
            for src in edit_paths(other / rec["edit_file"]):
                dst = plan.out / src.relative_to(other)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    if k:
        atomic_write_jsonl(mine, lines[:k])
        log.info("reusing the first %d finished case(s) of %s", k, other)
    return k


def _run(plan: Plan, progress: bool, loaded, judge) -> dict:
    import torch

    from detoxedit.cases import case_inputs, to_edit_case, with_unsafe_answer
    from detoxedit.io import cache_dir
    from detoxedit.judges import get_judge
    from detoxedit.methods.base import edited_side, needs_training
    from detoxedit.models.generate import GenerationSettings, with_suffix
    from detoxedit.models.load import load_model
    from detoxedit.responses import ResponseCache, model_key
    from detoxedit.settings import prepare_method

    cfg, t_start = plan.cfg, time.perf_counter()
    torch.manual_seed(cfg.seed)
    method = prepare_method(cfg)
    if loaded is not None:
        model, tok = loaded
    else:
        model, tok = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map)
    if needs_training(method.editor):
        method.editor.load_artifact(Path(cfg.artifact).expanduser())
    judge = judge or get_judge(cfg.judge)
    settings = GenerationSettings(max_new_tokens=method.max_new_tokens, prompt_format=method.prompt_format,
                                  batch_size=cfg.batch_size or 8, seed=cfg.seed)
    cases = []
    for position, (index, record) in enumerate(plan.chosen):
        text = case_inputs(record).get("DS") or record.adversarial_prompt or record.question or ""
        post = with_suffix(text, method.suffix)
        cases.append(_Case(position, index, record, to_edit_case(record, plan.source, index),
                           vanilla_prompt=post if cfg.protocol == "fair" else text, edited_prompt=post))
    edited_prompts, post_settings = edited_side(method.editor, [c.edited_prompt for c in cases], settings)
    for c, p in zip(cases, edited_prompts):
        c.edited_prompt = p
    ctx = _Context(model, tok, method, judge, cfg, settings, post_settings, plan.out)
    # the base model's answers, before any edit: the vanilla side of the before/after check, and the unsafe
    # text a case without one is located against (the cache is keyed by the base weights, so it is used
    # only while no edit is applied)
    cache = ResponseCache(cache_dir(), model_key(model, cfg.model, cfg.dtype))
    vanilla, _ = cache.generate(model, tok, [c.vanilla_prompt for c in cases], settings)
    for c, answer in zip(cases, vanilla):
        c.vanilla = answer
        c.case = with_unsafe_answer(c.case, model, tok, settings, cache, suffix=method.suffix)
    try:
        if plan.options.combine == "sequential":
            per_case = _sequential(ctx, cases, progress)
        else:
            per_case = _joint(ctx, cases, plan.options, progress)
        summary = _finish(ctx, plan, cases, per_case, t_start)
    finally:
        for edit in reversed(ctx.applied):
            edit.revert(model)
    return summary


def _check_answers(ctx: _Context, cases: list[_Case]) -> list[tuple[str, float, bool]]:
    """``(answer, judge label, ended)`` of the model as it is now, for each case's edited input: the
    runner's greedy answer check (``bench`` validates each edit with the same three things)."""
    from detoxedit.bench.runner import answer_ended
    from detoxedit.models.generate import generate

    prompts = [c.edited_prompt for c in cases]
    answers = generate(ctx.model, ctx.tok, prompts, ctx.post_settings)
    labels = ctx.judge.judge(prompts, answers)
    return [(a, float(lab), answer_ended(ctx.tok, a, ctx.post_settings.max_new_tokens))
            for a, lab in zip(answers, labels)]


def _edit_summary(meta: dict) -> dict:
    """The parts of an edit's meta a progress line keeps (not the losses, distances or fingerprints)."""
    keys = ("layer", "layers", "param", "lr", "steps_run", "unsafe_source", "timings")
    return {k: meta[k] for k in keys if k in meta}


def _sequential(ctx: _Context, cases: list[_Case], progress: bool) -> list[dict]:
    """Edit case after case on the model as the kept edits left it; keep an edit only when it passes."""
    from detoxedit.bench.records import RecordWriter, validate_answer
    from detoxedit.io import read_jsonl
    from detoxedit.methods.base import Edit

    path = ctx.out / PROGRESS_FILE
    writer = RecordWriter(path)  # repairs a line torn by a kill
    done = read_jsonl(path)[0] if path.exists() else []
    for k, rec in enumerate(done):
        if k >= len(cases) or rec.get("position") != k or rec.get("case_id") != str(cases[k].record.id):
            raise DetoxEditError(f"{path} does not list the selected cases in order (line {k + 1}); "
                                 "use another --out")
    for rec in done:  # replay the kept edits, in order, onto the base model
        if rec["status"] == "kept":
            edit = Edit.load(ctx.out / rec["edit_file"])
            try:
                ctx.apply(edit)
            except DetoxEditError as err:
                raise DetoxEditError(f"the kept edit {rec['edit_file']} does not replay on this model ({err}); "
                                     "use another --out") from None
            ctx.applied.append(edit)
    if done:
        log.info("resuming: %d of %d cases done (%d kept)", len(done), len(cases),
                 sum(r["status"] == "kept" for r in done))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(cases), initial=len(done), desc=f"detox {ctx.cfg.method} sequential", unit="case",
                   dynamic_ncols=True)
    try:
        for c in cases[len(done):]:
            t0 = time.perf_counter()
            edit = ctx.method.editor.edit(ctx.model, ctx.tok, c.case)
            t_edit = time.perf_counter() - t0
            ctx.apply(edit)
            try:
                (answer, label, ended), = _check_answers(ctx, [c])
            except BaseException:
                edit.revert(ctx.model)
                raise
            v = validate_answer(edit.meta.get("validation"), label, ended, ctx.cfg.judge, instance=True)
            keep = v["status"] != "failed"
            rec = {"position": c.position, "case_id": str(c.record.id), "index": c.index,
                   "category": c.record.canonical_category or c.record.category,
                   "status": "kept" if keep else "skipped", "reasons": v["reasons"],
                   "method_status": v["method_status"], "validation": v, "edit": _edit_summary(edit.meta),
                   "answer": answer, "label": label, "ended": ended, "edit_file": None}
            if keep:
                rec["edit_file"] = f"edits/{c.position:04d}-case-{c.record.id}"
                edit.save(ctx.out / rec["edit_file"])  # before the progress line: a kill between redoes the case
                ctx.applied.append(edit)
            else:
                edit.revert(ctx.model)
                log.info("case %s: edit skipped (%s)", c.record.id, "; ".join(v["reasons"]))
            rec["timings"] = {"edit_s": t_edit, "total_s": time.perf_counter() - t0}
            writer.append(rec)
            done.append(rec)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return done


def _joint(ctx: _Context, cases: list[_Case], options: DetoxOptions, progress: bool) -> list[dict]:
    """Train (or reuse) the joint delta, apply it, and validate every case on it."""
    from detoxedit.bench.records import validate_answer
    from detoxedit.methods.base import Edit, edit_paths

    path = ctx.out / "edits" / "joint"
    ids = [c.case.case_id for c in cases]
    if edit_paths(path)[0].is_file():
        edit = Edit.load(path)
        if [str(i) for i in edit.meta.get("case_ids", [])] != [str(i) for i in ids]:
            raise DetoxEditError(f"{edit_paths(path)[0]} was trained on other cases; use another --out")
        log.info("reusing the joint delta trained earlier (%s)", edit_paths(path)[0])
    else:
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(desc=f"detox {ctx.cfg.method} joint ({len(cases)} cases)", unit="step", dynamic_ncols=True)

        def on_step(record):
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
        try:
            edit = ctx.method.editor.edit_joint(ctx.model, ctx.tok, [c.case for c in cases],
                                                batch_cases=options.joint_batch, epochs=options.joint_epochs,
                                                on_step=on_step)
        finally:
            if bar is not None:
                bar.close()
        edit.save(path)
    ctx.apply(edit)
    ctx.applied.append(edit)
    method_checks = (edit.meta.get("validation") or {}).get("per_case") or [None] * len(cases)
    checked = _check_answers(ctx, cases)
    out = []
    for c, mv, (answer, label, ended) in zip(cases, method_checks, checked):
        mv = {k: v for k, v in mv.items() if k != "case_id"} if mv else None
        v = validate_answer(mv, label, ended, ctx.cfg.judge, instance=True)
        out.append({"position": c.position, "case_id": str(c.record.id), "index": c.index,
                    "category": c.record.canonical_category or c.record.category,
                    "status": "passed" if v["status"] != "failed" else "failed", "reasons": v["reasons"],
                    "method_status": v["method_status"], "validation": v,
                    "edit": {"layer": edit.meta.get("layer"), "param": edit.meta.get("param"),
                             "located_layer": next((x["layer"] for x in edit.meta.get("located", [])
                                                    if str(x["case_id"]) == str(c.case.case_id)), None)},
                    "answer": answer, "label": label, "ended": ended})
    return out


def combined_edit(ctx: _Context, meta: dict):
    """The applied edits as one ``Edit``: detoxified minus base weights (float32) of every parameter they
    change, with the base weights' fingerprints. Applying it to the base model gives the detoxified weights
    up to float32 rounding of the subtraction (the checkpoint holds them exactly)."""
    import torch

    from detoxedit.methods.base import Edit, param_fingerprint

    params = dict(ctx.model.named_parameters())
    base = {name: orig for name, orig in ctx.base.items()
            if not torch.equal(params[name].detach(), orig)}  # an edit tried and skipped changes nothing
    deltas = {name: (params[name].detach().float() - orig.float()).cpu() for name, orig in base.items()}
    fps = {name: param_fingerprint(orig) for name, orig in base.items()}
    return Edit(method=ctx.cfg.method, deltas=deltas, meta={**meta, "base_fingerprints": fps})


def _ds(labels: list[float]) -> dict:
    """DS (% of answers the judge called safe) with its 95% bootstrap CI (``metrics.safety``)."""
    from detoxedit.metrics.safety import metric_table

    return metric_table([{"DS": lab} for lab in labels])["DS"]


def _finish(ctx: _Context, plan: Plan, cases: list[_Case], per_case: list[dict], t_start: float) -> dict:
    """The before/after check on the edited cases, the summary, the combined delta and the checkpoint."""
    from detoxedit.config import versions
    from detoxedit.detox.card import write_checkpoint
    from detoxedit.io import atomic_write_json
    from detoxedit.judges.accuracy import accuracy_line

    cfg, opts = ctx.cfg, plan.options
    sequential = opts.combine == "sequential"
    finals = _check_answers(ctx, cases) if sequential else [(r["answer"], r["label"], r["ended"]) for r in per_case]
    vanilla_labels = ctx.judge.judge([c.vanilla_prompt for c in cases], [c.vanilla for c in cases])
    from detoxedit.bench.runner import answer_ended

    rows = []
    for c, rec, (answer, label, ended), v_label in zip(cases, per_case, finals, vanilla_labels):
        rows.append({**rec, "final": {"answer": answer, "label": label, "ended": ended},
                     "vanilla": {"answer": c.vanilla, "label": float(v_label),
                                 "ended": answer_ended(ctx.tok, c.vanilla, ctx.settings.max_new_tokens)}})
    layers = [r["edit"].get("layer") for r in rows if r["status"] in ("kept", "passed")
              and r["edit"].get("layer") is not None]
    summary: dict = {
        "format_version": 1, "finished": True, "base_model": cfg.model, "dtype": cfg.dtype,
        "model_type": ctx.model.config.model_type, "method": cfg.method, "method_config": cfg.method_config,
        "hparams": cfg.hparams, "artifact": cfg.artifact, "combine": opts.combine,
        "data": cfg.data, "split": cfg.split,
        "selection": {"limit": cfg.limit, "cases": cfg.cases, "per_category": cfg.per_category},
        "judge": cfg.judge, "judge_accuracy": accuracy_line(cfg.judge), "protocol": cfg.protocol,
        "decoding": {"greedy": True, "max_new_tokens": ctx.settings.max_new_tokens,
                     "prompt_format": ctx.settings.prompt_format, "suffix": ctx.method.suffix},
        "n_cases": len(rows), "cases": rows,
        "train_cases": {"n": len(rows),
                        "DS_vanilla": _ds([r["vanilla"]["label"] for r in rows]),
                        "DS_detoxified": _ds([r["final"]["label"] for r in rows]),
                        "ended_vanilla": sum(r["vanilla"]["ended"] for r in rows),
                        "ended_detoxified": sum(r["final"]["ended"] for r in rows)},
        "timings": {"total_s": time.perf_counter() - t_start},
        "versions": versions(), "evaluations": {},
    }
    if sequential:
        summary["kept"] = sum(r["status"] == "kept" for r in rows)
        summary["skipped"] = [{"case_id": r["case_id"], "category": r["category"], "reasons": r["reasons"]}
                              for r in rows if r["status"] == "skipped"]
        summary["layers"] = {str(k): layers.count(k) for k in sorted(set(layers))}
        summary["timings"]["edit_s_per_case"] = (sum(r["timings"]["edit_s"] for r in rows) / len(rows)) if rows else 0
    else:
        meta = ctx.applied[-1].meta
        summary["joint"] = {
            "batch_cases": opts.joint_batch, "epochs": meta.get("epochs"), "epochs_run": meta.get("epochs_run"),
            "steps_run": meta.get("steps_run"), "lr": meta.get("lr"), "attempts": meta.get("attempts"),
            "layer": meta.get("layer"), "layer_rule": meta.get("layer_rule"),
            "layer_histogram": meta.get("layer_histogram"), "diverged_at": meta.get("diverged_at"),
            "final_loss": (meta.get("losses") or [{}])[-1].get("loss"), "timings": meta.get("timings")}
        summary["passed"] = sum(r["status"] == "passed" for r in rows)
        summary["failed"] = [{"case_id": r["case_id"], "category": r["category"], "reasons": r["reasons"]}
                             for r in rows if r["status"] == "failed"]
        summary["layers"] = {str(meta.get("layer")): len(rows)}
    combined = combined_edit(ctx, {"combine": opts.combine, "case_ids": [r["case_id"] for r in rows],
                                   "kept": [r["case_id"] for r in rows if r["status"] in ("kept", "passed")]})
    combined.save(plan.out / EDIT_FILE)
    summary["edited_params"] = sorted(combined.deltas)
    write_checkpoint(ctx.model, ctx.tok, plan.out / MODEL_DIR, summary)
    atomic_write_json(plan.out / SUMMARY_FILE, summary)
    return summary
