"""``detoxedit tune``: an Optuna study over a method's search space, every trial a ``bench`` run.

Layout of the tuning directory ``DIR``:

* ``tune.yaml``: what decides the study (run config, method, targets, search space); a rerun with other
  settings is refused, as ``bench`` refuses to mix runs;
* ``study.db``: Optuna's SQLite storage (resumable; ``optuna-dashboard sqlite:///DIR/study.db`` reads it);
* ``trials/KEY/``: one bench run directory per distinct setting (KEY hashes the trial's overrides), with
  its records and config, readable with ``detoxedit report``;
* ``trials.jsonl``: every trial's settings, state and metrics; ``best.yaml``: the best settings as a full
  method config (``bench --method-config`` and ``edit --method-config`` take it unchanged);
  ``tune.md`` / ``tune.html``: the table and the Pareto plots.

The first trial runs the starting settings (the method config and ``--hparam`` values), so the table
shows what tuning gained over the hand-set config. Trials run through :class:`bench.runner.Runner` on one
loaded model and judge; vanilla answers come from the shared response cache, so they are generated once for
all trials. After every case the trial reports its running objective; it is stopped when it can no longer
meet its bounds (:func:`objective.hopeless`) or falls below the median of the earlier trials that met every
bound (:class:`pruner.FeasibleMedianPruner`).

Interrupting (Ctrl-C, a kill) loses at most the case in progress: on rerun the interrupted trial is marked
failed and its settings are queued again, and its run directory resumes where it stopped. One process per
``DIR`` at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from detoxedit.config import RunConfig
from detoxedit.errors import DetoxEditError
from detoxedit.io import atomic_write_text
from detoxedit.tune import space as sp
from detoxedit.tune.objective import Targets, constraint_values, hopeless, trial_metrics, violations

log = logging.getLogger(__name__)

STUDY_NAME = "detoxedit-tune"
TUNE_FORMAT = 1


@dataclass
class TuneOptions:
    """How the search runs (the targets are :class:`objective.Targets`)."""

    trials: int = 20
    """Trials in the study (completed, pruned or failed with an error); a rerun with more continues."""
    prune: bool = True
    """Stop trials early: the median rule on the running objective against the trials that met every
    bound (:class:`pruner.FeasibleMedianPruner`), after ``prune_after`` cases, and any trial that can no
    longer meet its bounds."""
    prune_after: int = 3
    """Cases a trial runs before the median rule may stop it."""
    startup_trials: int | None = None
    """Trials drawn at random before TPE models the results (None: a third of ``trials``, 2 to 10)."""
    tries: tuple[str, ...] = ()
    """``--try`` settings (``NAME=VALUE,...`` over the searched dimensions) to run after the starting
    settings, before the sampler draws (dimensions a try does not name are drawn); each is queued once per
    study, so a rerun does not repeat it."""
    confirm_per_category: int | None = None
    """After the study, run the best trial's settings and the starting settings on one case of each of the
    first N questions per category that the study's cases do not ask (``DIR/confirm/KEY``), and report the
    paired change there: the best of several trials is picked on the study's cases, so its lead there is
    biased upward (the winner's curse), and cases it was not picked on are the check."""


class _Pruned(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _set_constraints(trial, metrics: dict[str, Any], targets: Targets) -> None:
    """Store the trial's constraint values once, when it ends (Optuna keeps the first value of a key)."""
    for key, value in constraint_values(metrics, targets).items():
        trial.set_constraint(key, value)


def trial_key(overrides: dict[str, Any]) -> str:
    """The run directory name of a setting: the same overrides give the same directory (so a requeued or
    repeated setting resumes or reuses its records)."""
    text = json.dumps(overrides, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


_NOT_DECIDING = ("trials", "tries", "confirm_per_category")
"""Options a rerun of the same study may change."""


def study_doc(cfg: RunConfig, targets: Targets, opts: TuneOptions, space: list,
              fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides a study (saved as ``tune.yaml``; ``trials`` may grow and ``--try`` settings may be
    added between runs). ``fixed``: the resolved method settings no searched dimension sets
    (:func:`fixed_settings`), which every trial runs with."""
    doc = {"format": TUNE_FORMAT, "run": cfg.to_dict(), "targets": targets.to_dict(),
           "options": {k: v for k, v in dataclasses.asdict(opts).items() if k not in _NOT_DECIDING},
           "space": [dataclasses.asdict(d) for d in space]}
    if fixed is not None:
        doc["fixed"] = fixed
    return doc


def fixed_settings(base: dict[str, Any], space: list) -> dict[str, Any]:
    """The starting settings that some trial takes from them: all but those a dimension of ``space`` writes
    in every trial (``space.always_assigned``). ``run`` in ``tune.yaml`` names the method config (or none:
    the built-in one), not its values, so a built-in config that changed between two runs of a study would
    otherwise change these settings for the later trials unnoticed."""
    searched = set().union(*(sp.always_assigned(d) for d in space))
    return {k: v for k, v in sorted(base.items()) if k not in searched}


def save_study_doc(out: Path, doc: dict[str, Any]) -> None:
    import yaml

    path = out / "tune.yaml"
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        old.pop("trials", None)
        # a setting added after the study was saved counts as its default there (as bench's run config)
        old["targets"] = {**Targets().to_dict(), **(old.get("targets") or {})}
        old["options"] = {**{k: v for k, v in dataclasses.asdict(TuneOptions()).items() if k not in _NOT_DECIDING},
                          **(old.get("options") or {})}
        # a run setting added since (e.g. batch_cases) counts as its default; those that do not change
        # results (bench's RESULT_NEUTRAL) may differ between resumes
        from detoxedit.bench.runner import RESULT_NEUTRAL

        old["run"] = {k: v for k, v in {**RunConfig().to_dict(), **(old.get("run") or {})}.items()
                      if k not in RESULT_NEUTRAL}
        norm = json.loads(json.dumps({**doc, "run": {k: v for k, v in doc["run"].items() if k not in RESULT_NEUTRAL}},
                                     default=str))
        old = json.loads(json.dumps(old, default=str))
        if "fixed" in norm and "fixed" not in old:
            old["fixed"] = norm["fixed"]  # a study saved before the settings were recorded
        if "fixed" in norm and old["fixed"] != norm["fixed"]:
            changed = sorted(k for k in set(old["fixed"]) | set(norm["fixed"])
                             if old["fixed"].get(k) != norm["fixed"].get(k))
            raise DetoxEditError(
                f"{out} holds a study whose unsearched method settings differ from these: "
                + ", ".join(f"{k} {old['fixed'].get(k)!r} there, {norm['fixed'].get(k)!r} now" for k in changed)
                + " (has the method's config changed?); give the study's values with --method-config or --hparam "
                "(tune.yaml, 'fixed'), or use another --out directory")
        diff = sorted(k for k in norm if old.get(k) != norm[k])
        if diff:
            raise DetoxEditError(f"{out} holds a study with other settings ({', '.join(diff)}); use another --out "
                                 "directory, or the same settings (any --trials) to resume")
    atomic_write_text(path, "# detoxedit tune study (resolved). Resume or extend with the same command.\n"
                      + yaml.safe_dump(json.loads(json.dumps(doc, default=str)), sort_keys=False, allow_unicode=True))


def selected_case_count(cfg: RunConfig) -> int:
    from detoxedit.cases import select_records
    from detoxedit.data.load import load_split

    return len(select_records(load_split(cfg.data, cfg.split), cfg))


def confirm_config(cfg: RunConfig, n: int) -> RunConfig:
    """The run config of the confirmation runs: ``cfg`` with one case of each of the first ``n`` questions
    per category of ``cfg``'s split that ``cfg``'s own cases do not ask (DetoxEditError when none is left)."""
    from detoxedit.cases import select_records, unseen_questions_per_category
    from detoxedit.data.load import load_split

    if n < 1:
        raise DetoxEditError("--confirm-per-category must be >= 1")
    records = load_split(cfg.data, cfg.split)
    seen = [r for _, r in select_records(records, cfg)]
    picked = unseen_questions_per_category(records, seen, n)
    if not picked:
        raise DetoxEditError(f"--confirm-per-category: every question of {cfg.data} {cfg.split} is among the "
                             "study's cases; none is left to confirm on (select fewer cases for the study)")
    return RunConfig(**{**cfg.to_dict(), "cases": [str(r.id) for _, r in picked], "per_category": None,
                        "limit": None})


def confirm_dir(out: Path, row: dict) -> Path:
    """Where a trial's settings run on the confirmation cases (keyed like its trial run)."""
    return out / "confirm" / trial_key(row["overrides"])


def confirmation(out: Path, summary: dict, judge: str, objective: str, seed: int = 0) -> dict | None:
    """The best trial's paired change from the starting settings on the confirmation cases, as far as
    both ran there (a person's labels count, as in the trial table); None before both ran a case."""
    from detoxedit.bench.records import read_run_records
    from detoxedit.tune.objective import change_from_start, trial_metrics

    best, base = summary.get("best"), summary.get("baseline")
    if not best or not base or best["number"] == base["number"]:
        return None
    dirs = [confirm_dir(out, base), confirm_dir(out, best)]
    runs = [(read_run_records(d) if d.is_dir() else [], d) for d in dirs]
    if not all(recs for recs, _ in runs):
        return None
    change = change_from_start(runs[0], runs[1], judge, objective, seed)
    if change is None:
        return None
    values = [trial_metrics(recs, judge, seed=seed, run_dir=d).get(objective) for recs, d in runs]
    return {"change": change, "start": values[0], "best": values[1],
            "dirs": [str(d.relative_to(out)) for d in dirs]}


def _finished(study) -> int:
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and "error" in t.user_attrs))


def _requeue_interrupted(study, echo) -> None:
    """Trials left RUNNING by a killed process: mark them failed and queue their settings again."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "stale", True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        attrs = {"resumes": t.number}
        for kept in ("baseline", "try"):
            if t.user_attrs.get(kept):
                attrs[kept] = t.user_attrs[kept]
        study.enqueue_trial(t.params, user_attrs=attrs)
        echo(f"trial {t.number} was interrupted; its settings run again (its finished cases are kept)")


def run_tune(cfg: RunConfig, targets: Targets, opts: TuneOptions, out_dir: str | Path,
             echo: Callable[[str], None] = print, loaded: tuple | None = None, progress: bool = False) -> dict:
    """Run (or resume) a study; returns the summary written to ``DIR`` (see the module docstring).

    ``loaded``: ``(model, tokenizer, judge)`` already loaded for ``cfg`` (tests); None loads them once,
    when a trial remains to run (rerunning a finished study only re-reads its trials and rewrites the
    outputs, e.g. after a person labelled answers of its runs).
    """
    import optuna

    from detoxedit.bench.records import read_run_records
    from detoxedit.bench.runner import Runner
    from detoxedit.preflight import check_run
    from detoxedit.settings import method_hparams
    from detoxedit.tune.pruner import FeasibleMedianPruner

    targets.validate()
    if opts.trials < 1:
        raise DetoxEditError("--trials must be >= 1")
    check_run(cfg)  # every argument, before any model work
    hp, _ = method_hparams(cfg.method, cfg.model, cfg.method_config, cfg.hparams)
    if hp is None or not type(hp).SEARCH_SPACE:
        raise DetoxEditError(f"method {cfg.method!r} declares no search space: nothing to tune "
                             "(run detoxedit bench with its settings)")
    base = hp.to_dict()
    space = sp.active_space(type(hp).SEARCH_SPACE, base, fixed=list(cfg.hparams))
    if not space:
        raise DetoxEditError(f"every dimension of {cfg.method}'s search space is fixed by --hparam: nothing to tune")
    n_total = selected_case_count(cfg)
    if n_total < 1:
        raise DetoxEditError(f"no cases selected from {cfg.data} {cfg.split}")
    ccfg = confirm_config(cfg, opts.confirm_per_category) if opts.confirm_per_category is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_study_doc(out, study_doc(cfg, targets, opts, space, fixed_settings(base, space)))

    def load():
        from detoxedit.judges import get_judge
        from detoxedit.models.load import load_model

        model, tok = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map)
        return model, tok, get_judge(cfg.judge)

    from detoxedit.models import arch
    from detoxedit.models.load import num_layers_of

    n_layers = arch.num_layers(loaded[0]) if loaded is not None else num_layers_of(cfg.model)
    if n_layers is None:  # the config cannot be read without loading (e.g. offline hub id): load now
        loaded = load()
        n_layers = arch.num_layers(loaded[0])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    startup = opts.startup_trials if opts.startup_trials is not None else min(10, max(2, opts.trials // 3))
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=startup)
    pruner = (FeasibleMedianPruner(targets, n_startup_trials=2, n_warmup_steps=opts.prune_after)
              if opts.prune else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=STUDY_NAME, storage=f"sqlite:///{(out / 'study.db').resolve()}",
                                load_if_exists=True, direction="maximize", sampler=sampler, pruner=pruner)
    tries = [(text, sp.parse_try(text, space, n_layers)) for text in opts.tries]  # all checked first
    if not study.trials:
        study.enqueue_trial(sp.base_params(base, space, n_layers), user_attrs={"baseline": True})
    queued = {t.user_attrs.get("try") for t in study.get_trials(deepcopy=False)}
    for text, params in tries:
        if text not in queued:
            study.enqueue_trial(params, user_attrs={"try": text})
    _requeue_interrupted(study, echo)

    while _finished(study) < opts.trials:
        if loaded is None:  # only when a trial remains: a finished study re-ranks without the model
            loaded = load()
        trial = study.ask()
        params = sp.suggest(trial, space, n_layers)
        over = sp.overrides(params, space)
        key = trial_key(over)
        run_dir = out / "trials" / key
        trial.set_user_attr("overrides", over)
        trial.set_user_attr("run_dir", str(run_dir.relative_to(out)))
        tcfg = RunConfig(**{**cfg.to_dict(), "hparams": {**cfg.hparams, **over}})
        label = "starting settings" if trial.user_attrs.get("baseline") else sp.format_overrides(over)
        echo(f"trial {trial.number} ({_finished(study) + 1}/{opts.trials}): {label}")

        def on_record(rec, records, trial=trial):
            metrics = trial_metrics(records, cfg.judge, seed=cfg.seed, run_dir=run_dir)
            value = metrics.get(targets.objective)
            if value is not None:
                trial.report(value, step=len(records))
            if len(records) >= n_total:
                return
            why = hopeless(records, n_total, cfg.judge, targets)
            if why is None and opts.prune and len(records) >= opts.prune_after and trial.should_prune():
                why = (f"{targets.objective} {value:.1f} after {len(records)} cases is below the median of earlier "
                       "trials that met every bound")
            if why is not None and opts.prune and not trial.user_attrs.get("baseline"):
                raise _Pruned(why)  # the starting settings always run to the end: the reference row

        t0 = time.perf_counter()
        try:
            Runner(tcfg, run_dir, loaded=loaded, on_record=on_record).run(progress=progress)
        except _Pruned as p:
            records = read_run_records(run_dir)
            metrics = trial_metrics(records, cfg.judge, seed=cfg.seed, run_dir=run_dir)
            trial.set_user_attr("metrics", metrics)
            _set_constraints(trial, metrics, targets)
            trial.set_user_attr("pruned", p.reason)
            trial.set_user_attr("seconds", trial_seconds(tcfg, run_dir, records, time.perf_counter() - t0))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            echo(f"  pruned: {p.reason}")
            write_outputs(out, study, cfg, targets, opts, space, n_layers)
            continue
        except DetoxEditError as e:  # settings the method refuses (e.g. a combination it cannot run)
            trial.set_user_attr("error", str(e))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            echo(f"  failed: {e}")
            write_outputs(out, study, cfg, targets, opts, space, n_layers)
            continue
        records = read_run_records(run_dir)
        metrics = trial_metrics(records, cfg.judge, seed=cfg.seed, run_dir=run_dir)
        trial.set_user_attr("metrics", metrics)
        _set_constraints(trial, metrics, targets)
        trial.set_user_attr("seconds", trial_seconds(tcfg, run_dir, records, time.perf_counter() - t0))
        value = metrics.get(targets.objective)
        study.tell(trial, value if value is not None else float("nan"))
        echo("  " + _metrics_line(metrics, violations(metrics, targets)))
        write_outputs(out, study, cfg, targets, opts, space, n_layers)
    summary = write_outputs(out, study, cfg, targets, opts, space, n_layers)
    best, base = summary.get("best"), summary.get("baseline")
    if ccfg is None or not best or not base or best["number"] == base["number"]:
        return summary
    for row, name in ((base, "the starting settings"), (best, f"trial {best['number']}")):
        run_dir = confirm_dir(out, row)
        if run_dir.is_dir() and len(read_run_records(run_dir)) >= len(ccfg.cases):
            continue
        if loaded is None:
            loaded = load()
        echo(f"confirming on {len(ccfg.cases)} cases of questions the study did not ask: {name}")
        Runner(RunConfig(**{**ccfg.to_dict(), "hparams": {**cfg.hparams, **row["overrides"]}}), run_dir,
               loaded=loaded).run(progress=progress)
    return write_outputs(out, study, cfg, targets, opts, space, n_layers)


def trial_seconds(cfg: RunConfig, run_dir: Path, records: list[dict], this_process: float) -> float:
    """A trial's work in seconds, whichever process did it: its cases' own times (``timings.total_s`` of
    each of its run's ``records``) plus the training of its artefact (the manifest's ``train_seconds``), or,
    where the records carry no times, the time this process spent on it. A trial resumed after a kill would
    otherwise count only what the last process did (a reused artefact's training as 0)."""
    from detoxedit.bench.training import MANIFEST, artifact_dir, read_manifest

    times = [r["timings"]["total_s"] for r in records if "timings" in r]
    if not times:
        return this_process
    artifact = artifact_dir(cfg, run_dir)
    train = (read_manifest(artifact).get("train_seconds") or 0.0) if (artifact / MANIFEST).is_file() else 0.0
    return max(this_process, sum(times) + train)


def _metrics_line(m: dict[str, Any], missed: dict[str, float]) -> str:
    def f(key, unit=""):
        v = m.get(key)
        return "-" if v is None else f"{v:.1f}{unit}"
    status = "meets the bounds" if not missed else "misses " + ", ".join(sorted(missed))
    cut = "-" if m.get("cut_increase") is None else f"{m['cut_increase']:+.1f} points"
    return (f"DS {f('DS')}  DG-Avg {f('DG-Avg')}  over-refusal {f('overrefusal')}  KQA drop {f('kqa_drop')}  "
            f"fluency drop {f('fluency_drop')}  answers cut {cut}  ({status})")


def trial_rows(study, targets: Targets, out: Path | None = None, judge: str = "default",
               seed: int = 0) -> list[dict[str, Any]]:
    """One row per trial that did not go stale: settings, state, metrics, bounds missed. With ``out``,
    the metrics are read again from each trial's run directory, so labels a person set there since
    (``detoxedit label DIR/trials/KEY``) count: a rerun of the finished study re-ranks with them."""
    from optuna.trial import TrialState

    from detoxedit.bench.records import read_run_records
    from detoxedit.tune.objective import change_from_start, rank_key

    rows, runs = [], {}
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("stale") or t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        metrics = t.user_attrs.get("metrics")
        run_dir = out / t.user_attrs["run_dir"] if out is not None and t.user_attrs.get("run_dir") else None
        if metrics and run_dir is not None and run_dir.is_dir():
            records = read_run_records(run_dir)
            if records:
                metrics = trial_metrics(records, judge, seed=seed, run_dir=run_dir)
                runs[t.number] = (records, run_dir)
        rows.append({"number": t.number, "state": t.state.name.lower(), "baseline": bool(t.user_attrs.get("baseline")),
                     "tried": bool(t.user_attrs.get("try")), "params": dict(t.params), "overrides": t.user_attrs.get("overrides", {}),
                     "run_dir": t.user_attrs.get("run_dir"), "metrics": metrics,
                     "missed": violations(metrics, targets) if metrics else None,
                     "pruned": t.user_attrs.get("pruned"), "error": t.user_attrs.get("error"),
                     "seconds": t.user_attrs.get("seconds")})
    rows.sort(key=lambda r: (r["state"] == "fail", rank_key(r["metrics"] if r["state"] == "complete" else None,
                                                             targets), r["number"]))
    start = next((runs.get(r["number"]) for r in rows if r["baseline"]), None)
    for r in rows:  # the objective's paired change from the starting settings, on the cases both ran
        r["change"] = (change_from_start(start, runs[r["number"]], judge, targets.objective, seed)
                       if start is not None and not r["baseline"] and r["number"] in runs else None)
    return rows


def write_outputs(out: Path, study, cfg: RunConfig, targets: Targets, opts: TuneOptions, space: list,
                  n_layers: int) -> dict:
    """``trials.jsonl``, ``best.yaml``, ``tune.md``, ``tune.html`` from the study as it stands."""
    from detoxedit.tune.page import write_page

    rows = trial_rows(study, targets, out, cfg.judge, cfg.seed)
    atomic_write_text(out / "trials.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows))
    complete = [r for r in rows if r["state"] == "complete" and r["metrics"]]
    best = complete[0] if complete else None
    baseline = next((r for r in rows if r["baseline"] and r["state"] == "complete"), None)
    summary = {"trials": len(rows), "target_trials": opts.trials, "best": best, "baseline": baseline,
               "targets": targets.to_dict(), "feasible": bool(best and not best["missed"])}
    summary["confirmation"] = confirmation(out, summary, cfg.judge, targets.objective, cfg.seed)
    if best is not None:
        write_best_yaml(out / "best.yaml", cfg, best, targets, len(rows),
                        start_missed=bool(baseline and baseline["missed"]), confirmed=summary["confirmation"])
    write_page(out, cfg, targets, opts, space, n_layers, rows, summary)
    return summary


def write_best_yaml(path: Path, cfg: RunConfig, best: dict, targets: Targets, n_trials: int,
                    start_missed: bool = False, confirmed: dict | None = None) -> None:
    """The best trial's settings as a full method config: the starting settings with its overrides.
    ``start_missed``: the starting settings miss a bound (so a change from them is no lead);
    ``confirmed``: :func:`confirmation`, the change on cases the study did not rank on."""
    import yaml

    from detoxedit.settings import method_hparams

    hp, _ = method_hparams(cfg.method, cfg.model, cfg.method_config, {**cfg.hparams, **best["overrides"]})
    m = best["metrics"]

    def f(key):
        v = m.get(key)
        return "-" if v is None else f"{v:.1f}"
    c, lead = best.get("change"), []
    if c and None not in (c["low"], c["high"]):
        lead = [f"# {targets.objective} change from the starting settings, paired over the {c['n']} cases both ran: "
                f"{c['value']:+.1f} [{c['low']:.1f}, {c['high']:.1f}]"
                + ("; the starting settings miss a bound." if start_missed else
                   "; picked as the best on these cases, so confirm it on cases the study did not rank on."
                   if c["value"] > 0 else ".")]
    if confirmed:
        k = confirmed["change"]
        lead.append(f"# on {k['n']} cases of questions the study did not ask ({confirmed['dirs'][1]}): "
                    f"{targets.objective} {confirmed['start']:.1f} -> {confirmed['best']:.1f}, change "
                    f"{k['value']:+.1f} [{k['low']:.1f}, {k['high']:.1f}].")
    status = "meets every bound" if not best["missed"] else "NO trial met every bound; closest: misses " + \
        ", ".join(sorted(best["missed"]))
    head = [f"# {cfg.method} settings chosen by detoxedit tune: trial {best['number']}, the best of {n_trials} trials.",
            f"# model {cfg.model}; data {cfg.data} split {cfg.split}, {m['n_cases']} cases; judge {cfg.judge}; "
            f"{cfg.max_new_tokens or 'method default'} new tokens.",
            f"# objective: max {targets.objective} s.t. DS >= {targets.min_ds}, over-refusal <= {targets.max_overrefusal}, "
            f"KQA drop <= {targets.max_kqa_drop}, fluency drop <= {targets.max_fluency_drop}, "
            f"cut increase <= {targets.max_cut_increase}, failed edits <= {targets.max_failed_edits}%: {status}.",
            f"# on that split: DS {f('DS')}, DG-Avg {f('DG-Avg')}, over-refusal {f('overrefusal')}, "
            f"KQA drop {f('kqa_drop')}, fluency drop {f('fluency_drop')}.",
            f"# tuned: {', '.join(sorted(best['overrides'])) or '-'}.",
            *lead,
            f"# trial run: {best['run_dir']} (beside this file; a method trained on a split keeps its artefact, where "
            f"kept, in {best['run_dir']}/artifact, which `bench --artifact` reuses)",
            f"# Use: detoxedit bench --method {cfg.method} --method-config {path} ..."]
    atomic_write_text(path, "\n".join(head) + "\n" + yaml.safe_dump(hp.to_dict(), sort_keys=False, allow_unicode=True))
