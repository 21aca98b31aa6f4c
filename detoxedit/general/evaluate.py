"""General ability before and after editing: KQA, CSum and over-refusal on the same inputs.

The paper measured KQA and CSum on one model edited with one case (test case 19). We evaluate the
vanilla model once, then each of K edits (from saved ``Edit`` files, or made here from K cases with the
run's method), and report every edit's numbers plus their mean and standard deviation. Each edit's
result is appended to ``OUT/general.records.jsonl`` as soon as it is done, so a rerun resumes;
``OUT/general.json`` holds the aggregate that ``detoxedit report`` shows.

Inputs are the tasks' zero-shot prompts, formatted like every other prompt (chat template when the
tokenizer has one) and *without* the method's suffix system prompt: this measures the edited model as
a user would run it.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from detoxedit.bench.records import RecordWriter, read_run_records
from detoxedit.general import LOCALITY_HEADLINE, TASKS, task_keys
from detoxedit.io import atomic_write_json

log = logging.getLogger(__name__)



def headlines() -> dict[str, str]:
    """Task -> the number tables show (plus over-refusal's companion, ``locality``)."""
    return {**{k: TASKS[k].headline for k in task_keys()}, "locality": LOCALITY_HEADLINE}


@dataclass
class GeneralConfig:
    tasks: list[str] = field(default_factory=task_keys)
    limit: int | None = None
    """Items per task (None: the whole set)."""
    sources: dict[str, str] = field(default_factory=dict)
    """Task -> 'builtin' (default), 'hub', 'hub:<id>' or a JSONL path."""
    prompt_format: str = "chat"
    batch_size: int = 8


def _numbers(task: str, result: dict) -> dict[str, float]:
    """The scalar numbers of a task result (percentages), without per-item lists or CIs."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class GeneralEvaluator:
    def __init__(self, model, tok, cfg: GeneralConfig, cache=None):
        from detoxedit.models.generate import GenerationSettings

        self.model, self.tok, self.cfg, self.cache = model, tok, cfg, cache
        tasks = {t: TASKS.get_entry(t) for t in cfg.tasks}
        self.items = {t: tasks[t].load(cfg.sources.get(t, "builtin"), limit=cfg.limit) for t in cfg.tasks}
        self.prompts = {t: tasks[t].prompts(self.items[t]) for t in cfg.tasks}
        self.settings = {t: GenerationSettings(max_new_tokens=tasks[t].max_new_tokens,
                                               prompt_format=cfg.prompt_format, batch_size=cfg.batch_size)
                         for t in cfg.tasks}
        self.vanilla_responses: dict[str, list[str]] = {}

    def _generate(self, task: str, use_cache: bool, wrapper=None) -> list[str]:
        from detoxedit.methods.base import edited_side
        from detoxedit.models.generate import generate

        prompts, settings = self.prompts[task], self.settings[task]
        if wrapper is not None:  # a prompt-level method (Self-Reminder) is part of the edited model
            prompts, settings = edited_side(wrapper, prompts, settings)
        if use_cache and self.cache:
            return self.cache.generate(self.model, self.tok, prompts, settings)[0]
        return generate(self.model, self.tok, prompts, settings)

    def evaluate(self, vanilla: bool, wrapper=None) -> dict:
        """Scores of the model as it is now (``vanilla``: responses are cached and kept for locality).

        ``wrapper``: an editor whose ``system_prompt`` / ``post_input`` belong to the edited model.
        """
        out = {}
        for task in self.cfg.tasks:
            responses = self._generate(task, use_cache=vanilla, wrapper=wrapper)
            result = TASKS[task].score(self.items[task], responses)
            out[task] = {"numbers": _numbers(task, result), "ci": result.get("ci", {}),
                         "responses": responses}
            if task == "overrefusal" and "by_kind" in result:
                out[task]["by_kind"] = result["by_kind"]
            if vanilla:
                self.vanilla_responses[task] = responses
            elif task == "overrefusal" and task in self.vanilla_responses:
                from detoxedit.general import overrefusal
                loc = overrefusal.locality(self.vanilla_responses[task], responses)
                out["locality"] = {"numbers": _numbers("locality", loc), "ci": loc.get("ci", {})}
        return out


def aggregate(vanilla: dict, edited: list[dict]) -> dict:
    """Vanilla numbers, and for each number the mean and standard deviation over the K edits."""
    summary = {"vanilla": {t: r["numbers"] for t, r in vanilla.items()}, "edited": {}, "k": len(edited)}
    for task in sorted({t for rec in edited for t in rec["results"]}):
        keys = sorted({k for rec in edited for k in rec["results"].get(task, {}).get("numbers", {})})
        summary["edited"][task] = {}
        for key in keys:
            vals = [rec["results"][task]["numbers"][key] for rec in edited
                    if key in rec["results"].get(task, {}).get("numbers", {})]
            summary["edited"][task][key] = {"mean": statistics.fmean(vals),
                                            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                                            "values": vals}
    summary["headlines"] = headlines()
    return summary


def run_general(model, tok, cfg: GeneralConfig, edits: list[tuple[str, object]], out_dir: Path,
                cache=None, progress: bool = True, wrapper=None) -> dict:
    """Evaluate vanilla and each ``(edit_id, Edit or callable returning an Edit)``; write and return the aggregate.

    A callable is only called for edits not finished in an earlier run. ``wrapper``: the editor, when its
    ``system_prompt`` / ``post_input`` are part of the edited model (Self-Reminder).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = GeneralEvaluator(model, tok, cfg, cache)
    vanilla = ev.evaluate(vanilla=True)
    rec_path = out_dir / "general.records.jsonl"
    done = {r["case_id"]: r for r in _read(rec_path)}
    writer = RecordWriter(rec_path)
    todo = edits
    if progress:
        from tqdm import tqdm
        todo = tqdm(edits, desc="general ability", unit="edit")
    results = []
    for edit_id, edit in todo:
        if str(edit_id) in done:
            results.append(done[str(edit_id)])
            continue
        edit = edit() if callable(edit) else edit
        with edit.applied_to(model):
            res = ev.evaluate(vanilla=False, wrapper=wrapper)
        rec = {"case_id": str(edit_id), "layer": edit.meta.get("layer"), "results": res}
        writer.append(rec)
        results.append(rec)
    summary = aggregate(vanilla, results)
    summary["config"] = {"tasks": cfg.tasks, "limit": cfg.limit, "sources": cfg.sources,
                         "prompt_format": cfg.prompt_format,
                         "max_new_tokens": {t: s.max_new_tokens for t, s in ev.settings.items()},
                         "items": {t: len(v) for t, v in ev.items.items()}}
    summary["vanilla_detail"] = {t: {k: v for k, v in r.items() if k != "responses"} for t, r in vanilla.items()}
    atomic_write_json(out_dir / "general.json", summary)
    return summary


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return read_run_records(path.parent, pattern=path.name)


def format_table(summary: dict) -> str:
    """A plain-text table: each headline number, vanilla vs edited (mean +- std over K edits)."""
    rows = [("KQA (contains, %)", "kqa", "contains"), ("KQA (EM, %)", "kqa", "em"),
            ("KQA questions refused (%)", "kqa", "refused"),
            ("CSum (ROUGE-1 F1, %)", "csum", "rouge1"),
            ("over-refusal (% harmless refused)", "overrefusal", "refusal_rate"),
            ("defense locality (ROUGE-L vs vanilla, %)", "locality", "rougeL")]
    lines = [f"{'general ability':42} {'vanilla':>9} {'edited (mean +- std, K=' + str(summary['k']) + ')':>28}"]
    for label, task, key in rows:
        v = summary["vanilla"].get(task, {}).get(key)
        e = summary["edited"].get(task, {}).get(key)
        if v is None and e is None:
            continue
        vs = "-" if v is None else f"{v:.2f}"
        es = "-" if e is None else f"{e['mean']:.2f} +- {e['std']:.2f}"
        lines.append(f"{label:42} {vs:>9} {es:>28}")
    return "\n".join(lines)
