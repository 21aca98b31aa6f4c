"""The benchmark runner: vanilla responses, edit, edited responses, revert, judge; one record per case.

For every case of a SafeEdit split:

1. the vanilla model's responses to the case's five inputs (DS and the four DG inputs), from the
   response cache when another run already produced them with the same model and decoding settings;
2. ``method.edit(model, tok, case)`` -> ``Edit``;
3. the edited model's responses to the same five inputs (``with edit.applied_to(model)``: the edit is
   reverted bit-exactly afterwards, also on error or Ctrl-C);
4. the judge labels all ten responses in one batch; fluency of each side; the edit's validation
   (``record["edit"]["validation"]``) gets the judge's verdict on the edited answer to the edited input
   (:func:`detoxedit.bench.records.validate_answer`);
5. over-refusal (``overrefusal_items`` > 0): the edited model's answers to the first built-in harmless
   prompts, beside the cached vanilla ones (:meth:`Runner.overrefusal`); and KQA (``kqa_items`` > 0): its
   answers to the first built-in KQA questions (:meth:`Runner.kqa`). Per-instance methods get both after
   every edit; a method with one shared edit gets them once, in the run's first record;
6. the record is appended to the shard's JSONL file (see ``detoxedit.bench.records``).

A run that fails before it wrote any record leaves no half-made run directory: what it created there
(``config.yaml``, a trained artefact, saved edits) is removed (:meth:`Runner.run`); a directory that
already held records is never removed.

A rerun reads the finished case ids and skips them, so a killed run resumes without losing or repeating a
case. ``--shard i/n`` takes every n-th case starting at i; shards write separate files.

Input formatting follows ``protocol``: ``fair`` (default) gives the vanilla model the same inputs as
the edited one, including the method's suffix system prompt; ``paper`` reproduces the reference's
asymmetry (suffix only on the edited side).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from detoxedit.responses import ResponseCache, model_key
from detoxedit.bench.records import RecordWriter, read_run_records, records_path, validate_answer
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
        # a setting added after the old run was saved counts as its default there
        defaults = RunConfig().to_dict()
        diff = sorted(k for k in doc if k not in ignore and old.get(k, defaults.get(k)) != doc[k])
        if diff:
            raise DetoxEditError(f"{run_dir} holds a run with other settings ({', '.join(diff)}); "
                                 "use another --out directory, or the same settings to resume")
    atomic_write_text(path, "# detoxedit run config (resolved). Repeat with: detoxedit bench --config "
                      f"{path} --out {run_dir}\n" + yaml.safe_dump({**doc, "versions": versions()},
                                                                  sort_keys=False, allow_unicode=True))


OVERREFUSAL_MAX_NEW_TOKENS = 64
"""Tokens per answer to a harmless prompt: the refusal detector
(:func:`detoxedit.general.overrefusal.is_explicit_refusal`) reads only the first 200 characters, which 64
tokens cover, so a longer answer would cost time and change no verdict."""


def answer_ended(tok, answer: str, max_new_tokens: int) -> bool:
    """Whether a generated answer ended its turn before the token limit.

    ``models.generate.generate`` returns text only, cut at the first stop token, so an answer that ended
    has fewer than ``max_new_tokens`` tokens and one cut by the limit has exactly that many. The count
    re-tokenizes the text (no special tokens), which can differ from the generated ids by a token or so
    where decoding merges pieces; an answer that stopped one token short of the limit may read as cut.
    """
    n = len(tok(answer, add_special_tokens=False)["input_ids"])
    return n < max_new_tokens


class Runner:
    """Holds the loaded model, method and judge for one run."""

    def __init__(self, cfg: RunConfig, run_dir: Path, shard: tuple[int, int] = (0, 1),
                 response_cache: Path | None = None, loaded: tuple | None = None, on_record=None):
        """``loaded``: ``(model, tokenizer, judge)`` already loaded for ``cfg`` (``detoxedit tune`` runs many
        trials on one model); None loads them. ``on_record(record, records)`` is called after each record is
        appended, with every record of the run so far (``detoxedit tune`` prunes hopeless trials there; an
        exception it raises stops the run after that record, which is kept)."""
        self.cfg, self.run_dir, self.shard = cfg, Path(run_dir), shard
        self.response_cache = response_cache
        self.loaded, self.on_record = loaded, on_record
        self._shared_edit = None  # the one edit of a method that does not use the instance
        self._shared_checked = False  # the shared edit's over-refusal / KQA are recorded (once per run)
        self._overrefusal_items = None  # the harmless prompts, loaded once
        self._kqa_items = None  # the KQA questions, loaded once
        self.written = 0  # records this run appended

    def run(self, progress: bool = True) -> Path:
        """Run (or resume) the selected cases; see the module docstring.

        Calls ``detoxedit.preflight.check_run(cfg)`` first (argument checks before any model work). If the run directory did not exist, or held nothing, when the run started and the
        run fails (any exception, Ctrl-C included) before it appended a record, everything this run created
        in the directory is removed and the error re-raised; a directory that held anything keeps what it
        held (only the new entries go), and one that holds records (from before, from this run, or from
        another shard's process running beside it) is never touched.
        """
        from detoxedit.preflight import check_run

        check_run(self.cfg)
        existed = self.run_dir.exists()
        before = {p.name for p in self.run_dir.iterdir()} if existed and self.run_dir.is_dir() else set()
        had_records = any(n.startswith("records") and n.endswith(".jsonl") for n in before)
        try:
            return self._run(progress)
        except BaseException:
            if not had_records and self.written == 0:
                self._remove_created(existed, before)
            raise

    def _remove_created(self, existed: bool, before: set[str]) -> None:
        """Remove what a failed run created: the whole directory if it did not exist, else its new entries."""
        if not self.run_dir.is_dir():
            return
        if any(self.run_dir.glob("records*.jsonl")):  # another shard's process wrote records meanwhile
            log.info("the run failed before its first record; %s holds other records, so it is kept", self.run_dir)
            return
        if not existed:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            log.info("the run failed before its first record; removed %s", self.run_dir)
            return
        for p in self.run_dir.iterdir():
            if p.name not in before:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        log.info("the run failed before its first record; removed what it created in %s", self.run_dir)

    def _run(self, progress: bool) -> Path:
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
        finished = read_run_records(self.run_dir)
        done = {r["case_id"] for r in finished}
        # a shared edit's checks belong to one record of the run: shard 0's first one
        self._shared_checked = self.shard[0] != 0 or any("overrefusal" in r or "kqa" in r for r in finished)
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
        if self.loaded is not None:
            model, tok, judge = self.loaded
        else:
            model, tok = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map)
            judge = None
        if needs_training(method.editor):
            from detoxedit.bench.training import ensure_artifact
            ensure_artifact(method, cfg, self.run_dir, model, tok, progress=progress)
        judge = judge or get_judge(cfg.judge)
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
            self.written += 1
            finished.append(rec)
            if self.on_record is not None:
                self.on_record(rec, finished)
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
            case = with_unsafe_answer(to_edit_case(record, source, index), model, tok, settings, cache,
                                      suffix=method.suffix)
            edit = method.editor.edit(model, tok, case)
        else:  # one edit for every case (trained on a split, or a prompt wrapper): computed once
            if self._shared_edit is None:
                self._shared_edit = method.editor.edit(model, tok, None)
            edit = self._shared_edit
        t_edit = time.perf_counter() - t1

        t2 = time.perf_counter()
        edited_prompts, post_settings = edited_side(method.editor, post_prompts, settings)
        # over-refusal and KQA: vanilla answers before the edit is applied (cached), edited ones inside it
        refusal = kqa = None
        checks_due = instance or not self._shared_checked
        check_refusal = checks_due and (cfg.overrefusal_items or 0) > 0
        check_kqa = checks_due and (cfg.kqa_items or 0) > 0
        if check_refusal:
            self.overrefusal_vanilla(model, tok, method, settings, cache)
        if check_kqa:
            self.kqa_vanilla(model, tok, settings, cache)
        t_or = t_kqa = 0.0
        with edit.applied_to(model):
            edited = generate(model, tok, edited_prompts, post_settings)
            t_edited = time.perf_counter() - t2
            if check_refusal:
                t_or = time.perf_counter()
                refusal = self.overrefusal(model, tok, method)
                t_or = time.perf_counter() - t_or
            if check_kqa:
                t_kqa = time.perf_counter()
                kqa = self.kqa(model, tok, method)
                t_kqa = time.perf_counter() - t_kqa
        if not instance and (check_refusal or check_kqa):
            self._shared_checked = True
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
        if instance:
            meta.setdefault("unsafe_source", case.unsafe_source)
        # whether each answer ended its turn before the token limit (an edit that makes answers loop)
        ended = {"vanilla": {k: answer_ended(tok, a, settings.max_new_tokens) for k, a in zip(keys, vanilla)},
                 "edited": {k: answer_ended(tok, a, post_settings.max_new_tokens) for k, a in zip(keys, edited)}}
        ds = keys.index("DS") if "DS" in keys else None
        meta["validation"] = validate_answer(
            edit.meta.get("validation"), None if ds is None else labels[n + ds],
            None if ds is None else ended["edited"]["DS"], cfg.judge, instance)
        rec = {
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
            "ended": ended,
            "edit": meta,
            "vanilla_cached": n_cached,
            "timings": {"vanilla_generation_s": t_vanilla, "edit_s": t_edit, "edited_generation_s": t_edited,
                        "overrefusal_s": t_or, "kqa_s": t_kqa, "judge_s": t_judge,
                        "total_s": time.perf_counter() - t0},
        }
        if refusal is not None:
            rec["overrefusal"] = refusal
        if kqa is not None:
            rec["kqa"] = kqa
        return rec

    def overrefusal_vanilla(self, model, tok, method: PreparedMethod, settings, cache) -> None:
        """Load the harmless prompts and the vanilla answers to them, once per runner (see
        :meth:`overrefusal`); must run while no edit is applied."""
        import dataclasses

        from detoxedit.general.overrefusal import load

        if self._overrefusal_items is not None:
            return
        items = load("builtin", limit=self.cfg.overrefusal_items)
        or_settings = dataclasses.replace(settings, max_new_tokens=OVERREFUSAL_MAX_NEW_TOKENS, do_sample=False)
        post = [with_suffix(it.prompt, method.suffix) for it in items]
        pre = post if self.cfg.protocol == "fair" else [it.prompt for it in items]
        vanilla, _ = cache.generate(model, tok, pre, or_settings)
        self._overrefusal_items = (items, or_settings, post, vanilla)

    def overrefusal(self, model, tok, method: PreparedMethod) -> dict:
        """Over-refusal of one edit: vanilla and edited answers to harmless prompts, and which refuse.

        Call :meth:`overrefusal_vanilla` before the edit is applied and this with the edit applied. The
        prompts are the first ``cfg.overrefusal_items`` of the built-in harmless set
        (:func:`detoxedit.general.overrefusal.load`; the file interleaves ``ordinary`` and
        ``dangerous_sounding`` prompts, so a short prefix holds both), with the method's suffix like the
        case's other inputs and through :func:`edited_side` on the edited side; the vanilla side follows
        the run's ``protocol`` as the vanilla DS/DG inputs do. Greedy, :data:`OVERREFUSAL_MAX_NEW_TOKENS`
        new tokens: the detector (:func:`detoxedit.general.overrefusal.is_explicit_refusal`) reads only the
        first 200 characters of an answer. The vanilla answers come from the ``ResponseCache``, so they
        are generated once per model and decoding settings. ``prompts`` in the result are the harmless
        prompts as listed (before the suffix).

        Per-instance methods (DINM, FT-L, MEND) get this check after every edit; a method that does not
        use the instance makes one shared edit, checked once, in the run's first record (shard 0), since
        repeating it per case would add nothing.
        """
        from detoxedit.general.overrefusal import is_explicit_refusal
        from detoxedit.models.generate import generate

        items, or_settings, post, vanilla = self._overrefusal_items
        prompts, post_settings = edited_side(method.editor, post, or_settings)
        edited = generate(model, tok, prompts, post_settings)
        out = {"ids": [it.id for it in items], "kinds": [it.kind for it in items],
               "prompts": [it.prompt for it in items], "vanilla": list(vanilla), "edited": list(edited),
               "vanilla_refusals": [is_explicit_refusal(a) for a in vanilla],
               "edited_refusals": [is_explicit_refusal(a) for a in edited],
               "max_new_tokens": OVERREFUSAL_MAX_NEW_TOKENS}
        return out

    def kqa_vanilla(self, model, tok, settings, cache) -> None:
        """Load the KQA questions and the vanilla answers to them, once per runner (see :meth:`kqa`); must
        run while no edit is applied."""
        import dataclasses

        from detoxedit.general import kqa

        if self._kqa_items is not None:
            return
        items = kqa.load("builtin", limit=self.cfg.kqa_items)
        kqa_settings = dataclasses.replace(settings, max_new_tokens=kqa.MAX_NEW_TOKENS, do_sample=False)
        prompts = kqa.prompts(items)
        vanilla, _ = cache.generate(model, tok, prompts, kqa_settings)
        self._kqa_items = (items, kqa_settings, prompts, vanilla, self._kqa_correct(items, vanilla))

    @staticmethod
    def _kqa_correct(items, answers) -> list[bool]:
        """Which answers contain a gold answer (``general.kqa``'s headline ``contains`` match)."""
        from detoxedit.general import kqa

        return [r["contains"] for r in kqa.score(items, answers, n_resamples=1)["per_item"]]

    def kqa(self, model, tok, method: PreparedMethod) -> dict:
        """KQA of one edit: the vanilla and edited answers to the first ``cfg.kqa_items`` built-in KQA
        questions and which contain a gold answer (``general.kqa``'s headline ``contains`` match).

        Call :meth:`kqa_vanilla` before the edit is applied and this with the edit applied. The prompts are
        KQA's zero-shot prompts *without* the method's suffix, as ``detoxedit general`` asks them (the model
        as a user runs it), through :func:`edited_side` on the edited side (a prompt-level method's
        reminder belongs to the edited model); greedy, ``kqa.MAX_NEW_TOKENS`` new tokens, vanilla answers
        from the ``ResponseCache``.
        """
        from detoxedit.general import kqa
        from detoxedit.models.generate import generate

        items, kqa_settings, prompts, vanilla, vanilla_correct = self._kqa_items
        edited_prompts, post_settings = edited_side(method.editor, prompts, kqa_settings)
        edited = generate(model, tok, edited_prompts, post_settings)
        return {"ids": [it.id for it in items], "vanilla": list(vanilla), "edited": list(edited),
                "vanilla_correct": list(vanilla_correct), "edited_correct": self._kqa_correct(items, edited),
                "max_new_tokens": kqa.MAX_NEW_TOKENS}


def run_bench(cfg: RunConfig, run_dir: str | Path, shard: tuple[int, int] = (0, 1), progress: bool = True,
              response_cache: Path | None = None) -> Path:
    """Run (or resume) a benchmark; ``response_cache`` overrides where vanilla responses are cached.

    A failed run leaves no half-made run directory (see :meth:`Runner.run`)."""
    return Runner(cfg, Path(run_dir), shard, response_cache).run(progress=progress)
