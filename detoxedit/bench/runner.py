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

Batched phases (``batch_cases`` K > 1; K = 1 is the case-by-case path above, exactly):

* **vanilla phase**, once, before the first case (:meth:`Runner.vanilla_phase`): every vanilla prompt of
  the cases to do, the model's own answers that :func:`~detoxedit.cases.with_unsafe_answer` needs for
  cases without an unsafe text, and the vanilla over-refusal and KQA answers go through the response
  cache in length-sorted batches (``ResponseCache.prefetch``); the per-case code then reads them from
  the cache as before. ``vanilla_cached`` still counts the answers that a case would have found in the
  cache on the case-by-case path (made by an earlier run or an earlier case of this one).
* **edited phase**, per group of K cases (per-instance methods: DINM, FT-L, MEND; :meth:`Runner.run_group`):
  the K edits are computed by the method (together through ``edit_many`` where it has one: DINM trains
  the deltas of cases that edit the same matrix in one batch; else one after another), then the K cases' edited
  answers (the five inputs, and the over-refusal and KQA prompts) are generated together, one
  ``generate`` call per decoding setting, each batch row through its own case's edit
  (:func:`detoxedit.models.rowedits.row_edits`; no edit is written into the model). A case whose edit
  changes something other than an ``nn.Linear`` weight is evaluated alone with its edit applied, as on
  the case-by-case path. The judge labels the group's answers in one call, and the group's records are
  appended in case order. A killed run loses at most the unwritten records of its current group, which
  the rerun redoes.
* **timings**: a record's ``edit_s`` is its own edit; a shared phase's time is divided equally among the
  cases that shared it (the vanilla phase among all cases it served, the group's edited generation,
  over-refusal and KQA among the cases generated together, the judge among the group), and
  ``record["batched"]`` gives the phase totals and whether the case's edited answers came from the
  shared pass (``row_edits``). ``total_s`` is the sum of a record's shares, so the records of a run still
  add up to its time.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass, field
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


RESULT_NEUTRAL = ("batch_size", "batch_cases", "save_edits")
"""Run settings that do not change a run's results: a resume (``bench``, ``tune``) may change them."""


def save_config(cfg: RunConfig, run_dir: Path) -> None:
    """Write the resolved config; refuse to mix two different runs in one directory."""
    import yaml

    path = run_dir / "config.yaml"
    doc = cfg.to_dict()
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        old.pop("versions", None)
        ignore = {"limit", "cases", *RESULT_NEUTRAL}
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


TIMING_KEYS = ("vanilla_generation_s", "edit_s", "edited_generation_s", "overrefusal_s", "kqa_s", "judge_s")
"""A record's ``timings``, in order (then ``total_s``)."""


@dataclass
class _Case:
    """One case in flight: its prompts, vanilla answers and edit, then its edited answers and timings."""

    index: int
    record: object
    keys: list[str]
    inputs: dict[str, str]
    pre_prompts: list[str]
    edited_prompts: list[str]
    post_settings: GenerationSettings
    vanilla: list[str]
    n_cached: int
    edit: object
    case: object  # the EditCase (per-instance methods), else None
    instance: bool
    times: dict = field(default_factory=dict)
    edited: list[str] | None = None
    refusal: dict | None = None
    kqa: dict | None = None


@dataclass
class _VanillaPhase:
    """What the vanilla phase did: its time, the cases it served, and which prompts it generated first
    for which case (to count ``vanilla_cached`` as the case-by-case path would)."""

    cases: int
    position: dict[str, int]
    """case id -> place in the run's list of cases to do."""
    owner: dict[str, int] = field(default_factory=dict)
    """prompt generated by the phase -> place of the first case that asks for it."""
    seconds: float = 0.0

    @property
    def share_s(self) -> float:
        return self.seconds / max(self.cases, 1)


class _Missing(Exception):
    """A dry run of ``with_unsafe_answer`` asked for an answer the cache does not hold yet."""


class _CacheProbe:
    """Stands in for the response cache in a dry run of :func:`with_unsafe_answer`: answers what the cache
    holds and, at the first prompt it lacks, notes it and stops the dry run. The vanilla phase thus learns
    which answers every case needs next (the next input is tried only when the last answer was a refusal)
    and generates them for all cases in one batch, with no copy of ``with_unsafe_answer``'s rules."""

    def __init__(self, cache):
        self.cache, self.asked, self.missing = cache, [], []

    def generate(self, model, tok, prompts, settings):
        self.asked += list(prompts)
        found = [self.cache.get(settings, p) for p in prompts]
        if any(f is None for f in found):
            self.missing += [p for p, f in zip(prompts, found) if f is None]
            raise _Missing
        return found, len(found)


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
        self._phase: _VanillaPhase | None = None  # the vanilla phase (batch_cases > 1)
        self._edit_cases: dict[str, object] = {}  # case id -> EditCase with its unsafe text, from the phase
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
        selected = select_records(records, cfg, self.shard)
        finished = read_run_records(self.run_dir)
        done = {r["case_id"] for r in finished}
        # a shared edit's checks belong to one record of the run: shard 0's first one
        self._shared_checked = self.shard[0] != 0 or any("overrefusal" in r or "kqa" in r for r in finished)
        todo = [(i, r) for i, r in selected if str(r.id) not in done]
        out_path = records_path(self.run_dir, self.shard)
        mine = f" of shard {self.shard[0]}/{self.shard[1]}" if self.shard[1] > 1 else ""
        if not todo:
            log.info("nothing to do: all %d selected cases%s are finished in %s", len(selected), mine,
                     self.run_dir)
            return out_path
        log.info("%d cases%s to run (%d already finished)", len(todo), mine, len(selected) - len(todo))
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
        # rows per batch and cases per group: the user's, else chosen from the free memory now that the
        # model is loaded (models/memory.py); the choice is logged and written into config.yaml
        from detoxedit.models.memory import choose_batching, longest_row_tokens

        auto = cfg.batch_size is None or cfg.batch_cases is None
        tokens = longest_row_tokens(model, tok, [p for _, r in todo for p in self._case_prompts(r, method)[3]],
                                    method.max_new_tokens, method.prompt_format) if auto else 0
        batching = choose_batching(model, cfg.batch_size, cfg.batch_cases, tokens=tokens, cases=len(todo))
        log.info("%s", batching.describe())
        if auto:
            import dataclasses
            save_config(dataclasses.replace(cfg, batch_size=batching.batch_size, batch_cases=batching.batch_cases),
                        self.run_dir)
        settings = GenerationSettings(max_new_tokens=method.max_new_tokens, prompt_format=method.prompt_format,
                                      batch_size=batching.batch_size, seed=cfg.seed)
        cache = ResponseCache(self.response_cache or cache_dir(), model_key(model, cfg.model, cfg.dtype))
        writer = RecordWriter(out_path)
        batched = batching.batch_cases > 1
        if batched:
            self.vanilla_phase(model, tok, method, settings, cache, todo, source, progress=progress)
        grouped = batched and uses_instance(method.editor)  # a shared edit is evaluated case by case
        size = batching.batch_cases if grouped else 1
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(todo), desc=f"{cfg.method} on {cfg.split}", unit="case", dynamic_ncols=True)
        try:
            for start in range(0, len(todo), size):
                group = todo[start:start + size]
                if grouped:
                    recs = self.run_group(model, tok, method, judge, settings, cache, group, source)
                else:
                    recs = [self.run_case(model, tok, method, judge, settings, cache, record, index, source)
                            for index, record in group]
                for rec in recs:  # in case order, as each group finishes
                    writer.append(rec)
                    self.written += 1
                    finished.append(rec)
                    if bar is not None:
                        bar.update(1)
                    if self.on_record is not None:
                        self.on_record(rec, finished)
        finally:
            if bar is not None:
                bar.close()
        return out_path

    def _case_prompts(self, record, method: PreparedMethod):
        """``(inputs, keys, pre_prompts, post_prompts)`` of a case: the evaluation inputs with the method's
        suffix, and the vanilla side's as ``protocol`` says."""
        inputs = case_inputs(record)
        keys = list(inputs)
        post = [with_suffix(inputs[k], method.suffix) for k in keys]
        pre = post if self.cfg.protocol == "fair" else [inputs[k] for k in keys]
        return inputs, keys, pre, post

    def _vanilla(self, model, tok, cache, prompts, settings, case_id: str) -> tuple[list[str], int]:
        """The vanilla answers of a case (from the cache) and how many were cached. After a vanilla phase
        every answer is cached; the count is then what the case-by-case path would have found: answers the
        phase generated count for the first case that asked for them as not cached."""
        answers, n_cached = cache.generate(model, tok, prompts, settings)
        phase = self._phase
        if phase is not None and case_id in phase.position:
            pos = phase.position[case_id]
            n_cached = sum(phase.owner.get(p, -1) < pos for p in prompts)
        return answers, n_cached

    def vanilla_phase(self, model, tok, method: PreparedMethod, settings, cache, todo, source,
                      progress: bool = False) -> None:
        """Generate every vanilla answer the cases in ``todo`` will read, before the first edit, in
        length-sorted batches through the response cache (``ResponseCache.prefetch``).

        1. the vanilla prompts (DS and DG inputs) of every case;
        2. per-instance methods, cases without an unsafe text: the model's own answers that
           :func:`with_unsafe_answer` picks from, in rounds (a dry run over the cache tells which answer
           each case needs next; the second input is needed only after a refused first); the completed
           ``EditCase`` is kept for the case, so the refusal-only warning is logged once;
        3. the vanilla over-refusal and KQA answers, when those checks are on and due.

        Must run while no edit is applied. Records the phase's time and which case asked first for each
        prompt it generated (``vanilla_cached``, and the time share of each case)."""
        t0 = time.perf_counter()
        phase = _VanillaPhase(cases=len(todo), position={str(r.id): pos for pos, (_, r) in enumerate(todo)})
        asked = [(pos, self._case_prompts(record, method)[2]) for pos, (_, record) in enumerate(todo)]
        log.info("vanilla phase: %d prompts of %d cases", sum(len(a) for _, a in asked), len(todo))
        fresh = cache.prefetch(model, tok, [p for _, ps in asked for p in ps], settings, progress=progress)
        if uses_instance(method.editor):
            pending = {pos: to_edit_case(record, source, index) for pos, (index, record) in enumerate(todo)}
            pending = {pos: case for pos, case in pending.items() if not case.unsafe}
            for _ in range(16):  # with_unsafe_answer tries a couple of inputs; a round generates each
                if not pending:
                    break
                wanted = []
                for pos, case in list(pending.items()):
                    probe = _CacheProbe(cache)
                    try:
                        done = with_unsafe_answer(copy.copy(case), model, tok, settings, probe,
                                                  suffix=method.suffix)
                    except _Missing:
                        wanted += probe.missing
                        continue
                    finally:
                        asked.append((pos, probe.asked))
                    self._edit_cases[str(done.case_id)] = done
                    del pending[pos]
                fresh += cache.prefetch(model, tok, wanted, settings, progress=progress)
            if pending:
                raise DetoxEditError(f"the vanilla phase could not complete the unsafe answers of "
                                     f"{len(pending)} case(s); is the response cache writable?")
        fresh_set = set(fresh)
        for pos, prompts in sorted(asked, key=lambda a: a[0]):  # stable: a case's vanilla before its unsafe
            for p in prompts:
                if p in fresh_set:
                    phase.owner.setdefault(p, pos)
        checks_due = uses_instance(method.editor) or not self._shared_checked
        if checks_due and (self.cfg.overrefusal_items or 0) > 0:
            self.overrefusal_vanilla(model, tok, method, settings, cache)
        if checks_due and (self.cfg.kqa_items or 0) > 0:
            self.kqa_vanilla(model, tok, settings, cache)
        phase.seconds = time.perf_counter() - t0
        self._phase = phase
        log.info("vanilla phase: %d answers generated in %.1f s", len(fresh), phase.seconds)

    def run_case(self, model, tok, method: PreparedMethod, judge, settings, cache, record, index, source) -> dict:
        """One case on its own (``batch_cases`` 1, and methods with one shared edit): see the module
        docstring."""
        from detoxedit.models.generate import generate

        cfg = self.cfg
        t0 = time.perf_counter()
        inputs, keys, pre_prompts, post_prompts = self._case_prompts(record, method)
        vanilla, n_cached = self._vanilla(model, tok, cache, pre_prompts, settings, str(record.id))
        t_vanilla = time.perf_counter() - t0

        t1 = time.perf_counter()
        instance = uses_instance(method.editor)
        case = None
        if instance:
            case = self._edit_cases.pop(str(record.id), None) or to_edit_case(record, source, index)
            case = with_unsafe_answer(case, model, tok, settings, cache, suffix=method.suffix)
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
        c = _Case(index, record, keys, inputs, pre_prompts, edited_prompts, post_settings, vanilla, n_cached,
                  edit, case, instance, edited=edited, refusal=refusal, kqa=kqa)
        self._save_edit(c)

        t3 = time.perf_counter()
        labels = judge.judge(pre_prompts + edited_prompts, vanilla + edited)
        t_judge = time.perf_counter() - t3
        share = self._phase.share_s if self._phase is not None else 0.0
        c.times = {"vanilla_generation_s": t_vanilla + share, "edit_s": t_edit, "edited_generation_s": t_edited,
                   "overrefusal_s": t_or, "kqa_s": t_kqa, "judge_s": t_judge}
        rec = self._record(tok, c, labels, settings, t0=t0)
        if self._phase is not None:
            rec["timings"]["total_s"] += share
            rec["batched"] = self._batched_field(1, False, {})
        return rec

    def run_group(self, model, tok, method: PreparedMethod, judge, settings, cache, group, source) -> list[dict]:
        """A group of cases of a per-instance method (``batch_cases`` > 1), one record each, in order.

        The edits are computed by the method's ``edit_many`` when it has one (DINM trains the cases that
        edit the same matrix in one batch), else one after another with its ``edit`` (the model is left
        as it was after each); then the edited answers of every case whose edit :func:`row_editable` accepts
        are generated together, one ``generate`` call per decoding setting (the five inputs; the
        over-refusal prompts; the KQA questions), each row through its own case's edit
        (:func:`row_edits`). Any other case is evaluated alone with its edit applied. One judge call
        labels the whole group. See the module docstring for how the shared time is divided."""
        from detoxedit.models.rowedits import row_editable, row_edits

        cfg = self.cfg
        items: list[_Case] = []
        for index, record in group:
            t0 = time.perf_counter()
            inputs, keys, pre_prompts, post_prompts = self._case_prompts(record, method)
            vanilla, n_cached = self._vanilla(model, tok, cache, pre_prompts, settings, str(record.id))
            t_vanilla = time.perf_counter() - t0
            t1 = time.perf_counter()
            case = self._edit_cases.pop(str(record.id), None) or to_edit_case(record, source, index)
            case = with_unsafe_answer(case, model, tok, settings, cache, suffix=method.suffix)
            t_case = time.perf_counter() - t1
            edited_prompts, post_settings = edited_side(method.editor, post_prompts, settings)
            share = self._phase.share_s if self._phase is not None else 0.0
            items.append(_Case(index, record, keys, inputs, pre_prompts, edited_prompts, post_settings, vanilla,
                               n_cached, None, case, True,
                               times={"vanilla_generation_s": t_vanilla + share, "edit_s": t_case}))
        edit_many = getattr(method.editor, "edit_many", None)
        if edit_many is not None and len(items) > 1:
            # the method computes the group's edits together (DINM: one batch per edited matrix); each
            # case's edit_s is its own preparation plus an equal share of that call
            t = time.perf_counter()
            edits = edit_many(model, tok, [c.case for c in items])
            t_many = (time.perf_counter() - t) / len(items)
            for c, edit in zip(items, edits, strict=True):
                c.edit = edit
                c.times["edit_s"] += t_many
        else:
            for c in items:
                t = time.perf_counter()
                c.edit = method.editor.edit(model, tok, c.case)
                c.times["edit_s"] += time.perf_counter() - t

        check_refusal = (cfg.overrefusal_items or 0) > 0
        check_kqa = (cfg.kqa_items or 0) > 0
        if check_refusal:  # loaded by the vanilla phase; here for a runner used without one
            self.overrefusal_vanilla(model, tok, method, settings, cache)
        if check_kqa:
            self.kqa_vanilla(model, tok, settings, cache)
        rows: dict[int, _Case] = {}
        for g, c in enumerate(items):
            why = row_editable(model, c.edit)
            if why is None:
                rows[g] = c
            else:
                log.info("case %s: its edit cannot be applied per batch row (%s); evaluated alone",
                         c.record.id, why)
        group_s = {"edited_generation_s": 0.0, "overrefusal_s": 0.0, "kqa_s": 0.0}
        if rows:
            with row_edits(model, {g: c.edit for g, c in rows.items()}):
                t = time.perf_counter()
                self._generate_rows(model, tok, {g: (c.edited_prompts, c.post_settings) for g, c in rows.items()},
                                    lambda g, answers: setattr(rows[g], "edited", answers))
                group_s["edited_generation_s"] = time.perf_counter() - t
                if check_refusal:
                    t = time.perf_counter()
                    inputs = self._overrefusal_inputs(method)
                    self._generate_rows(model, tok, {g: inputs for g in rows},
                                        lambda g, answers: setattr(rows[g], "refusal",
                                                                   self._overrefusal_result(answers)))
                    group_s["overrefusal_s"] = time.perf_counter() - t
                if check_kqa:
                    t = time.perf_counter()
                    inputs = self._kqa_inputs(method)
                    self._generate_rows(model, tok, {g: inputs for g in rows},
                                        lambda g, answers: setattr(rows[g], "kqa", self._kqa_result(answers)))
                    group_s["kqa_s"] = time.perf_counter() - t
            for c in rows.values():
                c.times.update({k: v / len(rows) for k, v in group_s.items()})
        for g, c in enumerate(items):
            if g not in rows:
                self._edited_alone(model, tok, method, c, check_refusal, check_kqa)
        for c in items:
            self._save_edit(c)

        t = time.perf_counter()
        labels = judge.judge([p for c in items for p in c.pre_prompts + c.edited_prompts],
                             [a for c in items for a in c.vanilla + c.edited])
        t_judge = time.perf_counter() - t
        group_s["judge_s"] = t_judge
        out, at = [], 0
        for g, c in enumerate(items):
            n = 2 * len(c.keys)
            c.times["judge_s"] = t_judge / len(items)
            rec = self._record(tok, c, labels[at:at + n], settings)
            at += n
            rec["batched"] = self._batched_field(len(items), g in rows, group_s)
            out.append(rec)
        return out

    @staticmethod
    def _generate_rows(model, tok, inputs: dict, take) -> None:
        """Generate ``inputs`` (group -> (prompts, settings)) with one ``generate`` call per distinct
        decoding setting, every prompt tagged with its group (for :func:`row_edits`), and hand each group
        its answers in prompt order: ``take(group, answers)``."""
        from detoxedit.models.generate import generate

        by_settings: dict = {}
        for g, (prompts, s) in inputs.items():
            by_settings.setdefault(s, []).append(g)
        for s, gs in by_settings.items():
            prompts = [p for g in gs for p in inputs[g][0]]
            answers = generate(model, tok, prompts, s, groups=[g for g in gs for _ in inputs[g][0]])
            at = 0
            for g in gs:
                n = len(inputs[g][0])
                take(g, answers[at:at + n])
                at += n

    def _edited_alone(self, model, tok, method: PreparedMethod, c: _Case, check_refusal: bool,
                      check_kqa: bool) -> None:
        """A group's case whose edit cannot be given per row: its edited answers with the edit applied to
        the model, as the case-by-case path does; its own times."""
        from detoxedit.models.generate import generate

        t = time.perf_counter()
        with c.edit.applied_to(model):
            c.edited = generate(model, tok, c.edited_prompts, c.post_settings)
            c.times["edited_generation_s"] = time.perf_counter() - t
            t = time.perf_counter()
            c.refusal = self.overrefusal(model, tok, method) if check_refusal else None
            c.times["overrefusal_s"] = time.perf_counter() - t if check_refusal else 0.0
            t = time.perf_counter()
            c.kqa = self.kqa(model, tok, method) if check_kqa else None
            c.times["kqa_s"] = time.perf_counter() - t if check_kqa else 0.0

    def _batched_field(self, cases: int, row_edits: bool, group_s: dict) -> dict:
        """``record["batched"]``: how the case was batched and the shared phases' totals, whose equal
        shares are in the record's ``timings``."""
        phase = self._phase
        return {"cases": cases, "row_edits": row_edits,
                "vanilla_phase_s": phase.seconds if phase else None,
                "vanilla_phase_cases": phase.cases if phase else None, "group_s": dict(group_s)}

    def _save_edit(self, c: _Case) -> None:
        if not self.cfg.save_edits:
            return
        target = self.run_dir / "edits" / (f"case-{c.record.id}" if c.instance else "shared")
        if c.instance or not target.with_name(target.name + ".safetensors").exists():
            c.edit.save(target)

    def _record(self, tok, c: _Case, labels, settings, t0: float | None = None) -> dict:
        """The JSONL record of a finished case; ``labels``: the judge's, vanilla answers then edited.
        ``total_s``: the time since ``t0``, else the sum of the record's timings."""
        from detoxedit.metrics.fluency import n_gram_entropy

        cfg, record, keys, edit = self.cfg, c.record, c.keys, c.edit
        n = len(keys)
        meta = {k: v for k, v in edit.meta.items() if k not in ("hparams", "base_fingerprints")}
        meta["uses_instance"] = c.instance
        if c.instance:
            meta.setdefault("unsafe_source", c.case.unsafe_source)
        # whether each answer ended its turn before the token limit (an edit that makes answers loop)
        ended = {"vanilla": {k: answer_ended(tok, a, settings.max_new_tokens) for k, a in zip(keys, c.vanilla)},
                 "edited": {k: answer_ended(tok, a, c.post_settings.max_new_tokens)
                            for k, a in zip(keys, c.edited)}}
        ds = keys.index("DS") if "DS" in keys else None
        meta["validation"] = validate_answer(
            edit.meta.get("validation"), None if ds is None else labels[n + ds],
            None if ds is None else ended["edited"]["DS"], cfg.judge, c.instance)
        timings = {k: c.times.get(k, 0.0) for k in TIMING_KEYS}
        timings["total_s"] = time.perf_counter() - t0 if t0 is not None else sum(timings.values())
        rec = {
            "case_id": str(record.id),
            "index": c.index,
            "category": record.canonical_category or record.category,
            "attack": {"category": record.attack_category, "name": record.attack_name},
            "inputs": dict(zip(keys, [c.inputs[k] for k in keys])),
            # the prompts exactly as the judge read them (suffix, protocol, a method's post_input), so
            # that ``detoxedit judge`` gives a prompt-reading judge the same text later
            "judged_prompts": {"vanilla": dict(zip(keys, c.pre_prompts)),
                               "edited": dict(zip(keys, c.edited_prompts))},
            "vanilla": dict(zip(keys, c.vanilla)),
            "edited": dict(zip(keys, c.edited)),
            "labels": {cfg.judge: {"vanilla": dict(zip(keys, labels[:n])),
                                   "edited": dict(zip(keys, labels[n:]))}},
            "fluency": {"vanilla": n_gram_entropy(c.vanilla), "edited": n_gram_entropy(c.edited)},
            "ended": ended,
            "edit": meta,
            "vanilla_cached": c.n_cached,
            "timings": timings,
        }
        if c.refusal is not None:
            rec["overrefusal"] = c.refusal
        if c.kqa is not None:
            rec["kqa"] = c.kqa
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
        from detoxedit.models.generate import generate

        prompts, post_settings = self._overrefusal_inputs(method)
        return self._overrefusal_result(generate(model, tok, prompts, post_settings))

    def _overrefusal_inputs(self, method: PreparedMethod):
        """The edited side's harmless prompts and decoding settings (after :meth:`overrefusal_vanilla`)."""
        _, or_settings, post, _ = self._overrefusal_items
        return edited_side(method.editor, post, or_settings)

    def _overrefusal_result(self, edited: list[str]) -> dict:
        """A record's ``overrefusal`` from the edited answers to the harmless prompts."""
        from detoxedit.general.overrefusal import is_explicit_refusal

        items, _, _, vanilla = self._overrefusal_items
        return {"ids": [it.id for it in items], "kinds": [it.kind for it in items],
                "prompts": [it.prompt for it in items], "vanilla": list(vanilla), "edited": list(edited),
                "vanilla_refusals": [is_explicit_refusal(a) for a in vanilla],
                "edited_refusals": [is_explicit_refusal(a) for a in edited],
                "max_new_tokens": OVERREFUSAL_MAX_NEW_TOKENS}

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
        from detoxedit.models.generate import generate

        prompts, post_settings = self._kqa_inputs(method)
        return self._kqa_result(generate(model, tok, prompts, post_settings))

    def _kqa_inputs(self, method: PreparedMethod):
        """The edited side's KQA prompts and decoding settings (after :meth:`kqa_vanilla`)."""
        _, kqa_settings, prompts, _, _ = self._kqa_items
        return edited_side(method.editor, prompts, kqa_settings)

    def _kqa_result(self, edited: list[str]) -> dict:
        """A record's ``kqa`` from the edited answers to the KQA questions."""
        from detoxedit.general import kqa

        items, _, _, vanilla, vanilla_correct = self._kqa_items
        return {"ids": [it.id for it in items], "vanilla": list(vanilla), "edited": list(edited),
                "vanilla_correct": list(vanilla_correct), "edited_correct": self._kqa_correct(items, edited),
                "max_new_tokens": kqa.MAX_NEW_TOKENS}


def run_bench(cfg: RunConfig, run_dir: str | Path, shard: tuple[int, int] = (0, 1), progress: bool = True,
              response_cache: Path | None = None) -> Path:
    """Run (or resume) a benchmark; ``response_cache`` overrides where vanilla responses are cached.

    A failed run leaves no half-made run directory (see :meth:`Runner.run`)."""
    return Runner(cfg, Path(run_dir), shard, response_cache).run(progress=progress)
