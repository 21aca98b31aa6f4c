"""A saved detoxified checkpoint against its base model, on held-out cases, with the bench's own code.

:func:`evaluate_checkpoint` loads the checkpoint as plain transformers loads it and takes the parameters
that differ from the base model's as one shared edit (:class:`CheckpointEdit`: applying it copies the
checkpoint's tensors exactly). Then:

* **DS, DG, fluency**: every selected case goes through ``Runner.run_case``, the code path of a ``bench``
  record for a method that makes one edit for every case: the base model's answers (from the response
  cache, shared with every run of that model and decoding settings) and the detoxified model's answers to
  the case's five inputs, judged together; records in ``OUT/records.jsonl`` (resumable; ``detoxedit
  report OUT`` and ``detoxedit compare`` read it). The records say ``uses_instance: false``: these cases
  were not edited on, so DS here is generalisation to unseen attacks, not the paper's defense success.
* **KQA, CSum, over-refusal** (and defense locality): ``general.evaluate.run_general`` with the edit, on
  the first ``general_limit`` items of each built-in task (``OUT/general.json``).

The result (``OUT/evaluation.json``) gives each number for the base (``vanilla``) and the detoxified model
with its 95% bootstrap CI, and the paired change of DS and DG-Avg; it is also added to the checkpoint's
model card (:func:`detoxedit.detox.card.add_evaluation`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from detoxedit.config import RunConfig
from detoxedit.errors import DetoxEditError
from detoxedit.methods.base import Edit

log = logging.getLogger(__name__)

GENERAL_LIMIT = 24
"""Items per general-ability task by default (the demo's)."""


@dataclass
class CheckpointEdit(Edit):
    """The weights of a saved checkpoint as an ``Edit`` of its base model. ``apply`` copies ``targets`` (the
    checkpoint's tensors, in the parameters' dtype) into the model, so the edited model *is* the
    checkpoint, not base + (checkpoint - base) up to rounding; ``revert`` restores the base bit for bit.
    ``deltas`` (checkpoint minus base, float32) are kept for reading only."""

    targets: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def apply(self, model) -> "CheckpointEdit":
        if self._backup is not None:
            raise DetoxEditError("this edit is already applied; revert it first")
        params = dict(model.named_parameters())
        backup = {}
        with torch.no_grad():
            for name, target in self.targets.items():
                p = params[name]
                backup[name] = p.detach().clone()
                p.copy_(target.to(p.device, p.dtype))
        self._backup = backup
        return self


class CheckpointEditor:
    """A "method" whose one edit, for every case, is a saved checkpoint (``uses_instance = False``)."""

    name = "detox-checkpoint"
    uses_instance = False

    def __init__(self, edit: CheckpointEdit):
        self._edit = edit

    def edit(self, model, tok, case=None) -> CheckpointEdit:
        return self._edit


def checkpoint_edit(model, checkpoint: str | Path) -> CheckpointEdit:
    """The parameters of the checkpoint in ``checkpoint`` that differ from ``model``'s, as a
    :class:`CheckpointEdit`. The checkpoint is loaded with plain ``AutoModelForCausalLM.from_pretrained``
    (in the model's dtype, on the CPU) and dropped once compared; every parameter must exist in both with
    the same shape."""
    from transformers import AutoModelForCausalLM

    from detoxedit.models import arch

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise DetoxEditError(f"{checkpoint} is not a checkpoint directory (no config.json)")
    base = dict(model.named_parameters())
    dtype = next(iter(base.values())).dtype
    saved = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype, low_cpu_mem_usage=True)
    theirs = dict(saved.named_parameters())
    if set(theirs) != set(base):
        diff = sorted(set(theirs) ^ set(base))[:5]
        raise DetoxEditError(f"{checkpoint} does not have the base model's parameters (e.g. {diff})")
    targets, deltas = {}, {}
    for name, p in base.items():
        q = theirs[name].detach()
        if tuple(q.shape) != tuple(p.shape):
            raise DetoxEditError(f"{checkpoint}: {name} has shape {tuple(q.shape)}, the base model {tuple(p.shape)}")
        if not torch.equal(q.to(p.device), p.detach()):
            targets[name] = q.clone()
            deltas[name] = q.float().cpu() - p.detach().float().cpu()
    del saved, theirs
    by_name = {arch.down_proj_param_name(model, layer): layer for layer in range(arch.num_layers(model))}
    layers = sorted({by_name[n] for n in targets if n in by_name})
    meta = {"method": "detox-checkpoint", "checkpoint": str(checkpoint), "params": sorted(targets),
            "layer": None, "layers": layers}
    return CheckpointEdit(method="detox-checkpoint", deltas=deltas, meta=meta, targets=targets)


def evaluation_config(detox_summary: dict, split: str = "test", *, per_category: int | None = 2,
                      limit: int | None = None, cases: list[str] | None = None, data: str | None = None,
                      judge: str | None = None, max_new_tokens: int | None = None, batch_size: int | None = None,
                      device: str = "cpu") -> RunConfig:
    """The ``RunConfig`` of a held-out evaluation of a detox run's checkpoint: its base model, dtype,
    method settings (for the suffix system prompt and the prompt format: the inputs read as during the
    edits), data, judge, protocol and decoding unless given; over-refusal and KQA come from the general
    tasks, so the runner's own per-record checks are off."""
    return RunConfig(
        model=detox_summary["base_model"], dtype=detox_summary["dtype"], device=device,
        method=detox_summary["method"], method_config=detox_summary.get("method_config"),
        hparams=dict(detox_summary.get("hparams") or {}), artifact=detox_summary.get("artifact"),
        data=data or detox_summary["data"], split=split, per_category=per_category, limit=limit, cases=cases,
        judge=judge or detox_summary["judge"], protocol=detox_summary.get("protocol", "fair"),
        max_new_tokens=max_new_tokens or detox_summary["decoding"]["max_new_tokens"],
        prompt_format=detox_summary["decoding"].get("prompt_format"), batch_size=batch_size,
        overrefusal_items=0, kqa_items=0)


def evaluate_checkpoint(model, tok, checkpoint: str | Path, cfg: RunConfig, out_dir: str | Path, judge=None,
                        general_limit: int = GENERAL_LIMIT, tasks: list[str] | None = None,
                        progress: bool = True, card_name: str | None = None) -> dict:
    """Evaluate the checkpoint in ``checkpoint`` against ``model`` (its base, loaded for ``cfg``) on the
    cases ``cfg`` selects; see the module docstring. ``judge``: a judge object instead of ``cfg.judge``'s
    (tests). ``general_limit`` 0 skips the general tasks. ``card_name``: add the result to the
    checkpoint's card under this name (None: not added). Resumable: finished cases and general-ability
    results in ``out_dir`` are reused. The model is left as it was."""
    from detoxedit.bench.records import RecordWriter, read_run_records, records_path
    from detoxedit.bench.runner import Runner, save_config
    from detoxedit.cases import select_records
    from detoxedit.data.load import load_split, split_source
    from detoxedit.io import atomic_write_json, cache_dir
    from detoxedit.judges import get_judge
    from detoxedit.models.generate import GenerationSettings
    from detoxedit.preflight import check_run
    from detoxedit.responses import ResponseCache, model_key
    from detoxedit.settings import PreparedMethod, prepare_method

    out_dir = Path(out_dir)
    check_run(cfg, judge=judge is None, splits=[cfg.split])
    method = prepare_method(cfg)
    edit = checkpoint_edit(model, checkpoint)
    if not edit.targets:
        log.warning("%s has the base model's weights: nothing was edited", checkpoint)
    prepared = PreparedMethod(editor=CheckpointEditor(edit), hparams=method.hparams, suffix=method.suffix,
                              prompt_format=method.prompt_format, max_new_tokens=method.max_new_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir)  # refuses a directory holding an evaluation with other settings
    records = load_split(cfg.data, cfg.split)
    chosen = select_records(records, cfg)
    source = split_source(cfg.data, cfg.split)
    judge = judge or get_judge(cfg.judge)
    settings = GenerationSettings(max_new_tokens=method.max_new_tokens, prompt_format=method.prompt_format,
                                  batch_size=cfg.batch_size or 8, seed=cfg.seed)
    cache = ResponseCache(cache_dir(), model_key(model, cfg.model, cfg.dtype))
    runner = Runner(cfg, out_dir, loaded=(model, tok, judge))
    done = {r["case_id"] for r in read_run_records(out_dir)}
    writer = RecordWriter(records_path(out_dir, (0, 1)))
    todo = [(i, r) for i, r in chosen if str(r.id) not in done]
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=f"held-out {cfg.split}", unit="case", dynamic_ncols=True)
    try:
        for index, record in todo:
            writer.append(runner.run_case(model, tok, prepared, judge, settings, cache, record, index, source))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    general = None
    if general_limit:
        from detoxedit.general import task_keys
        from detoxedit.general.evaluate import GeneralConfig, run_general

        gcfg = GeneralConfig(tasks=tasks or task_keys(), limit=general_limit, prompt_format=method.prompt_format,
                             batch_size=cfg.batch_size or 8)
        general = run_general(model, tok, gcfg, [("detoxified", edit)], out_dir, cache=cache, progress=progress)
    result = summarize(out_dir, cfg, checkpoint, general)
    atomic_write_json(out_dir / "evaluation.json", result)
    if card_name:
        from detoxedit.detox.card import add_evaluation

        add_evaluation(Path(checkpoint), card_name, result)
    return result


def summarize(out_dir: Path, cfg: RunConfig, checkpoint, general: dict | None) -> dict:
    """Each number, base (``vanilla``) and detoxified, with its 95% bootstrap CI: DS and DG-Avg (cases
    resampled), fluency (mean n-gram entropy per case), the answers that ran to the token limit, and the
    general tasks' headline numbers with their own CIs (items resampled); plus the paired change of DS and
    DG-Avg (``metrics.safety.paired_difference``)."""
    from detoxedit.bench.records import read_run_records
    from detoxedit.bench.report import compute_metrics
    from detoxedit.general import LOCALITY_HEADLINE, TASKS
    from detoxedit.metrics.safety import bootstrap_ci

    recs = read_run_records(out_dir)
    m = compute_metrics(recs, cfg.judge)
    metrics: dict = {}
    for key in ("DS", "DG-Avg", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"):
        if key in m["vanilla"]:
            metrics[key] = {"vanilla": m["vanilla"][key], "detoxified": m["edited"].get(key)}
    flu = {}
    for side in ("vanilla", "edited"):
        values = [r["fluency"][side] for r in recs if (r.get("fluency") or {}).get(side) is not None]
        if values:
            lo, hi = bootstrap_ci(values)
            flu[side] = {"value": sum(values) / len(values), "ci_low": lo, "ci_high": hi, "n": len(values)}
    if flu:
        metrics["fluency"] = {"vanilla": flu.get("vanilla"), "detoxified": flu.get("edited")}
    if general:
        edited = _general_record(out_dir)
        for task in general["vanilla"]:
            headline = TASKS[task].headline if task in TASKS else LOCALITY_HEADLINE
            v = general.get("vanilla_detail", {}).get(task, {})
            e = (edited or {}).get(task, {})
            metrics[task] = {"vanilla": _cell(v, headline), "detoxified": _cell(e, headline)}
        if edited and "locality" in edited:
            metrics["locality"] = {"vanilla": None, "detoxified": _cell(edited["locality"], LOCALITY_HEADLINE)}
    return {"checkpoint": str(checkpoint), "run_dir": str(out_dir), "data": cfg.data, "split": cfg.split,
            "judge": cfg.judge, "n_cases": len(recs), "max_new_tokens": cfg.max_new_tokens,
            "general_items": (general or {}).get("config", {}).get("items"), "metrics": metrics,
            "change": {k: m["change"].get(k) for k in ("DS", "DG-Avg") if k in m["change"]},
            "cut": m.get("cut")}


def _general_record(out_dir: Path) -> dict | None:
    from detoxedit.bench.records import read_run_records

    for rec in read_run_records(out_dir, pattern="general.records.jsonl"):
        if rec["case_id"] == "detoxified":
            return rec["results"]
    return None


def _cell(result: dict, key: str) -> dict | None:
    """``{"value", "ci_low", "ci_high"}`` of number ``key`` of one general-task result."""
    value = (result.get("numbers") or {}).get(key)
    if value is None:
        return None
    ci = (result.get("ci") or {}).get(key) or [None, None]
    return {"value": value, "ci_low": ci[0], "ci_high": ci[1]}
