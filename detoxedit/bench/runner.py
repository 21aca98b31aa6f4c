"""The benchmark runner: vanilla responses, edit, edited responses, revert, judge; one record per case.

For every case of a SafeEdit split:

1. the vanilla model's responses to the case's five inputs (DS and the four DG inputs), from the
   response cache when another run already produced them with the same model and decoding settings;
2. ``method.edit(model, tok, case)`` -> ``Edit``;
3. the edited model's responses to the same five inputs (``with edit.applied_to(model)``: the edit is
   reverted bit-exactly afterwards, also on error or Ctrl-C);
4. the judge labels all ten responses in one batch; fluency of each side;
5. the record is appended to the shard's JSONL file (see ``detoxedit.bench.records``).

A rerun reads the finished case ids and skips them, so a killed run resumes without losing or repeating a
case. ``--shard i/n`` takes every n-th case starting at i; shards write separate files.

Input formatting follows ``protocol``: ``fair`` (default) gives the vanilla model the same inputs as
the edited one, including the method's suffix system prompt; ``paper`` reproduces the reference's
asymmetry (suffix only on the edited side).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from detoxedit.responses import ResponseCache, model_key
from detoxedit.bench.records import RecordWriter, read_run_records, records_path
from detoxedit.cases import case_inputs, select_records, to_edit_case, with_unsafe_answer
from detoxedit.config import RunConfig, versions
from detoxedit.errors import DetoxEditError
from detoxedit.io import atomic_write_text
from detoxedit.methods.base import edited_side, needs_training, uses_instance
from detoxedit.models.generate import GenerationSettings, with_suffix
from detoxedit.settings import PreparedMethod, prepare_method

log = logging.getLogger(__name__)

def save_config(cfg: RunConfig, run_dir: Path) -> None:
    """Write the resolved config; refuse to mix two different runs in one directory."""
    import yaml

    path = run_dir / "config.yaml"
    doc = cfg.to_dict()
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        old.pop("versions", None)
        ignore = {"limit", "cases", "batch_size", "save_edits"}
        diff = sorted(k for k in doc if k not in ignore and old.get(k) != doc[k])
        if diff:
            raise DetoxEditError(f"{run_dir} holds a run with other settings ({', '.join(diff)}); "
                                 "use another --out directory, or the same settings to resume")
    atomic_write_text(path, "# detoxedit run config (resolved). Repeat with: detoxedit bench --config "
                      f"{path} --out {run_dir}\n" + yaml.safe_dump({**doc, "versions": versions()},
                                                                  sort_keys=False, allow_unicode=True))


class Runner:
    """Holds the loaded model, method and judge for one run."""

    def __init__(self, cfg: RunConfig, run_dir: Path, shard: tuple[int, int] = (0, 1),
                 response_cache: Path | None = None):
        self.cfg, self.run_dir, self.shard = cfg, Path(run_dir), shard
        self.response_cache = response_cache
        self._shared_edit = None  # the one edit of a method that does not use the instance

    def run(self, progress: bool = True) -> Path:
        import torch

        from detoxedit.data.load import load_split, split_source
        from detoxedit.judges import get_judge
        from detoxedit.models.load import load_model
        from detoxedit.io import cache_dir

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        records = load_split(cfg.data, cfg.split)
        method = prepare_method(cfg)
        save_config(cfg, self.run_dir)
        todo = select_records(records, cfg, self.shard)
        done = {r["case_id"] for r in read_run_records(self.run_dir)}
        todo = [(i, r) for i, r in todo if str(r.id) not in done]
        out_path = records_path(self.run_dir, self.shard)
        if not todo:
            log.info("nothing to do: all %d selected cases are finished in %s", len(done), self.run_dir)
            return out_path
        log.info("%d cases to run (%d already finished)", len(todo), len(done))
        source = split_source(cfg.data, cfg.split)
        if uses_instance(method.editor):  # fail before loading the model, not at the first case
            for index, record in todo:
                to_edit_case(record, source, index)
        model, tok = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map)
        if needs_training(method.editor):
            from detoxedit.bench.training import ensure_artifact
            ensure_artifact(method, cfg, self.run_dir, model, tok, progress=progress)
        judge = get_judge(cfg.judge)
        settings = GenerationSettings(max_new_tokens=method.max_new_tokens, prompt_format=method.prompt_format,
                                      batch_size=cfg.batch_size, seed=cfg.seed)
        cache = ResponseCache(self.response_cache or cache_dir(), model_key(model, cfg.model, cfg.dtype))
        writer = RecordWriter(out_path)
        bar = todo
        if progress:
            from tqdm import tqdm
            bar = tqdm(todo, desc=f"{cfg.method} on {cfg.split}", unit="case", dynamic_ncols=True)
        for index, record in bar:
            rec = self.run_case(model, tok, method, judge, settings, cache, record, index, source)
            writer.append(rec)
        return out_path

    def run_case(self, model, tok, method: PreparedMethod, judge, settings, cache, record, index, source) -> dict:
        from detoxedit.metrics.fluency import n_gram_entropy
        from detoxedit.models.generate import generate

        cfg = self.cfg
        t0 = time.perf_counter()
        inputs = case_inputs(record)
        keys = list(inputs)
        post_prompts = [with_suffix(inputs[k], method.suffix) for k in keys]
        pre_prompts = post_prompts if cfg.protocol == "fair" else [inputs[k] for k in keys]
        vanilla, n_cached = cache.generate(model, tok, pre_prompts, settings)
        t_vanilla = time.perf_counter() - t0

        t1 = time.perf_counter()
        instance = uses_instance(method.editor)
        if instance:
            case = with_unsafe_answer(to_edit_case(record, source, index), model, tok, settings, cache)
            edit = method.editor.edit(model, tok, case)
        else:  # one edit for every case (trained on a split, or a prompt wrapper): computed once
            if self._shared_edit is None:
                self._shared_edit = method.editor.edit(model, tok, None)
            edit = self._shared_edit
        t_edit = time.perf_counter() - t1

        t2 = time.perf_counter()
        edited_prompts, post_settings = edited_side(method.editor, post_prompts, settings)
        with edit.applied_to(model):
            edited = generate(model, tok, edited_prompts, post_settings)
        t_edited = time.perf_counter() - t2
        if cfg.save_edits:
            target = self.run_dir / "edits" / (f"case-{record.id}" if instance else "shared")
            if instance or not target.with_name(target.name + ".safetensors").exists():
                edit.save(target)

        t3 = time.perf_counter()
        labels = judge.judge(pre_prompts + edited_prompts, vanilla + edited)
        t_judge = time.perf_counter() - t3
        n = len(keys)
        meta = {k: v for k, v in edit.meta.items() if k not in ("hparams", "base_fingerprints")}
        meta["uses_instance"] = instance
        return {
            "case_id": str(record.id),
            "index": index,
            "category": record.canonical_category or record.category,
            "attack": {"category": record.attack_category, "name": record.attack_name},
            "inputs": dict(zip(keys, [inputs[k] for k in keys])),
            # the prompts exactly as the judge read them (suffix, protocol, a method's post_input), so
            # that ``detoxedit judge`` gives a prompt-reading judge the same text later
            "judged_prompts": {"vanilla": dict(zip(keys, pre_prompts)), "edited": dict(zip(keys, edited_prompts))},
            "vanilla": dict(zip(keys, vanilla)),
            "edited": dict(zip(keys, edited)),
            "labels": {cfg.judge: {"vanilla": dict(zip(keys, labels[:n])),
                                   "edited": dict(zip(keys, labels[n:]))}},
            "fluency": {"vanilla": n_gram_entropy(vanilla), "edited": n_gram_entropy(edited)},
            "edit": meta,
            "vanilla_cached": n_cached,
            "timings": {"vanilla_generation_s": t_vanilla, "edit_s": t_edit, "edited_generation_s": t_edited,
                        "judge_s": t_judge, "total_s": time.perf_counter() - t0},
        }


def run_bench(cfg: RunConfig, run_dir: str | Path, shard: tuple[int, int] = (0, 1), progress: bool = True,
              response_cache: Path | None = None) -> Path:
    """Run (or resume) a benchmark; ``response_cache`` overrides where vanilla responses are cached."""
    return Runner(cfg, Path(run_dir), shard, response_cache).run(progress=progress)
