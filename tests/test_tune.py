"""``detoxedit tune``: the search space, the constrained objective, and a study on a tiny model (two trials,
resumed after a kill, best settings loadable by bench)."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from test_runner import setup  # noqa: F401  (the fixture)
from detoxedit.bench.records import read_run_records
from detoxedit.config import RunConfig
from detoxedit.errors import DetoxEditError
from detoxedit.methods._hparams import Dim
from detoxedit.methods.dinm_hparams import DINMHyperParams
from detoxedit.tune import space as sp
from detoxedit.tune.objective import Targets, hopeless, pareto_front, rank_key, violations

# --- the search space ---------------------------------------------------------------------------------


def test_layer_dimension_covers_from_a_fraction_of_the_depth_to_the_last_block():
    # 30 blocks, last index 29: ceil(0.4 * 29) = ceil(11.6) = 12
    assert sp.layer_range(Dim("layers", "layer", low=0.4), 30) == (12, 29)
    assert sp.layer_range(Dim("layers", "layer", low=0.0), 4) == (0, 3)


def test_dinm_space_follows_the_starting_step_size_and_leaves_out_what_the_user_fixed():
    space = DINMHyperParams.SEARCH_SPACE
    adaptive = [d.name for d in sp.active_space(space, DINMHyperParams().to_dict())]
    fixed = [d.name for d in sp.active_space(space, DINMHyperParams(step_size="fixed").to_dict())]
    assert "max_steps" in adaptive and "num_steps" not in adaptive
    assert "num_steps" in fixed and "max_steps" not in fixed
    # --hparam layers=[3] fixes the layer, so the layer rule and the layer dimension both go
    without = [d.name for d in sp.active_space(space, DINMHyperParams().to_dict(), fixed=["layers"])]
    assert "layer_rule" not in without and "layers" not in without and "lr" in without


def test_suggestions_become_overrides_and_the_starting_settings_map_back():
    space = sp.active_space(DINMHyperParams.SEARCH_SPACE, DINMHyperParams().to_dict())
    trial = optuna.trial.FixedTrial({"lr": 2e-4, "max_steps": 12, "kl_factor": 0.5, "harmless_kl": 0,
                                     "layer_rule": "fixed", "layers": 20, "norm_constraint": 1e-3})
    params = sp.suggest(trial, space, n_layers=30)
    assert sp.overrides(params, space) == {"lr": 2e-4, "max_steps": 12, "kl_factor": 0.5, "harmless_kl": 0,
                                           "layers": [20], "norm_constraint": 1e-3}
    trial = optuna.trial.FixedTrial({"lr": 2e-4, "max_steps": 12, "kl_factor": 0.5, "harmless_kl": 0,
                                     "layer_rule": "normalized", "norm_constraint": None})
    over = sp.overrides(sp.suggest(trial, space, n_layers=30), space)
    assert over["layers"] == [] and over["distance"] == "normalized"  # no layer drawn: located per case
    base = DINMHyperParams(lr=1e-3, max_steps=40, kl_factor=0.1, harmless_kl=8).to_dict()
    params = sp.base_params(base, space, n_layers=30)
    assert params == {"lr": 1e-3, "max_steps": 40, "kl_factor": 0.1, "harmless_kl": 8,
                      "layer_rule": "euclidean", "norm_constraint": None}
    assert sp.overrides(params, space)["layers"] == []
    # a fixed layer in range maps to the 'fixed' rule and its index; one below the range is left to the sampler
    assert sp.base_params({**base, "layers": [25]}, space, 30)["layers"] == 25
    assert "layers" not in sp.base_params({**base, "layers": [3]}, space, 30)


def test_a_try_setting_is_read_in_the_search_s_own_names_and_checked():
    space = sp.active_space(DINMHyperParams.SEARCH_SPACE, DINMHyperParams().to_dict())
    assert sp.parse_try("layer_rule=fixed, layers=16", space, n_layers=24) == {"layer_rule": "fixed", "layers": 16}
    assert sp.parse_try("layer_rule=fixed,layers=[16],lr=2e-4", space, 24) == {"layer_rule": "fixed", "layers": 16,
                                                                              "lr": 2e-4}
    # 24 blocks, last index 23: the layer dimension covers ceil(0.4 * 23) = 10 .. 23
    for text, why in [("layers=16", "only with layer_rule=fixed"),
                      ("layer_rule=fixed,layers=9", r"integer in \[10, 23\]"),
                      ("layer_rule=fixed,layers=16.5", "integer"),
                      ("layer_rule=last", "one of euclidean, normalized, fixed"),
                      ("lr=1", r"number in \[0.0001, 0.003\]"), ("lr=fast", "must be a number"),
                      ("beta=0.1", "not a searched dimension"), ("lr", "not NAME=VALUE"), (" , ", "no NAME=VALUE")]:
        with pytest.raises(DetoxEditError, match=why):
            sp.parse_try(text, space, 24)


# --- the objective ------------------------------------------------------------------------------------


def test_violations_name_each_missed_bound_by_how_much_and_skip_what_was_not_measured():
    t = Targets(min_ds=90, max_overrefusal=10, max_kqa_drop=5, max_fluency_drop=1.5, max_cut_increase=10)
    m = {"DS": 80.0, "overrefusal": 12.5, "kqa_drop": None, "fluency_drop": 0.2, "cut_increase": -5.0,
         "failed_rate": 4 / 9 * 100}
    assert violations(m, t) == pytest.approx({"DS": 10.0, "overrefusal": 2.5, "failed_rate": 400 / 9 - 20})
    assert violations(m, Targets(min_ds=None, max_overrefusal=None, max_failed_edits=None)) == {}


def _rec(ds_label, refusals=None):
    r = {"labels": {"j": {"edited": {"DS": ds_label}}}, "edit": {"uses_instance": True}}
    if refusals is not None:
        r["overrefusal"] = {"edited_refusals": refusals}
    return r


def test_hopeless_when_the_best_remaining_outcome_still_misses_a_bound():
    t = Targets(min_ds=90, max_overrefusal=10)
    # 10 cases; one unsafe DS answer so far: at best 100 - 100 * 1/10 = 90 -> still possible
    assert hopeless([_rec(1), _rec(0)], 10, "j", t) is None
    # two unsafe: at best 80 < 90
    assert "DS cannot reach 90" in hopeless([_rec(1), _rec(1)], 10, "j", t)
    # failed edits: 3 of 10 failed so far -> at least 30% > 20%
    failed = [{**_rec(0), "edit": {"uses_instance": True, "validation": {"status": "failed", "reasons": ["x"], "method_status": "failed",
                                                                   "checks": {"answer_judge": "j"}}}}] * 3
    assert "failed edits" in hopeless(failed, 10, "j", Targets(min_ds=None, max_failed_edits=20))
    assert hopeless(failed[:2], 10, "j", Targets(min_ds=None, max_failed_edits=20)) is None  # 20% still possible
    # over-refusal: 4 prompts per edit, 10 edits = 40 answers; 5 refused so far -> at least 12.5% > 10
    assert "over-refusal" in hopeless([_rec(0, [1, 1, 1, 0]), _rec(0, [1, 1, 0, 0])], 10, "j", t)
    assert hopeless([_rec(0, [1, 1, 1, 0])], 10, "j", t) is None  # 3/40 = 7.5%


def _dg_rec(case_id, unsafe_keys=()):
    keys = ("DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ")
    return {"case_id": case_id, "edited": {k: "answer" for k in keys},
            "labels": {"j": {"edited": {k: float(k in unsafe_keys) for k in keys}}}}


def test_change_from_start_is_paired_over_shared_cases_and_uses_a_person_s_labels(tmp_path):
    from detoxedit.bench.human import append_label
    from detoxedit.tune.objective import change_from_start

    start = [_dg_rec("a"), _dg_rec("b", ["DG_onlyQ"]), _dg_rec("c"), _dg_rec("d", ["DG_otherA"])]
    trial = [_dg_rec("a"), _dg_rec("b"), _dg_rec("c"), _dg_rec("d", ["DG_otherA"]), _dg_rec("e", ["DG_otherQ"])]
    # shared cases a-d. start: onlyQ 75, otherA 75, otherQ 100, otherAQ 100 -> DG-Avg 87.5;
    # trial: onlyQ 100, otherA 75 -> 93.75. Change +6.25, from case b alone.
    c = change_from_start((start, None), (trial, None), "j", "DG-Avg")
    assert c["n"] == 4 and c["value"] == pytest.approx(6.25)
    # a resample changes by 6.25 x (times b is drawn): none in (3/4)^4 = 32% of draws, so the 2.5th percentile is
    # 0; three or more draws of b have probability 5.1%, four 0.4%, so the 97.5th lies between 12.5 and 18.75
    assert c["low"] == 0.0 and 12.5 <= c["high"] <= 18.75
    # a person reads the trial's case-d otherA answer as safe: trial DG-Avg 100, change +12.5
    run = tmp_path / "trial"
    run.mkdir()
    append_label(run, {"case_id": "d", "side": "edited", "key": "DG_otherA", "label": 0, "who": "t"})
    assert change_from_start((start, None), (trial, run), "j", "DG-Avg")["value"] == pytest.approx(12.5)
    assert change_from_start((start, None), ([_dg_rec("z")], None), "j", "DG-Avg") is None  # nothing shared


def test_pareto_front_and_ranking():
    # maximise the first coordinate, minimise the second: (80, 5) dominates (70, 6); (90, 20) is on the front
    assert pareto_front([(80, 5), (70, 6), (90, 20), (80, 5)]) == [0, 2, 3]
    t = Targets(min_ds=90, max_overrefusal=10)
    ok_low = {"DS": 95, "DG-Avg": 60, "overrefusal": 0}
    ok_high = {"DS": 92, "DG-Avg": 70, "overrefusal": 5}
    bad = {"DS": 80, "DG-Avg": 99, "overrefusal": 0}
    assert sorted([bad, ok_low, ok_high], key=lambda m: rank_key(m, t)) == [ok_high, ok_low, bad]


def test_median_pruning_compares_only_with_trials_that_met_every_bound():
    """The SFT study's case: refusers at DG-Avg 100 that miss the over-refusal bound must not stop a trial
    at 75 that meets it; once two trials meet every bound, the median of those (80 and 90 -> 85) decides."""
    from detoxedit.tune.pruner import FeasibleMedianPruner

    targets = Targets(min_ds=None, max_overrefusal=10, max_kqa_drop=None, max_fluency_drop=None,
                      max_cut_increase=None, max_failed_edits=None)
    study = optuna.create_study(direction="maximize")

    def done(value, overrefusal):
        study.add_trial(optuna.trial.create_trial(
            value=value, intermediate_values={1: value, 3: value},
            user_attrs={"metrics": {"DG-Avg": value, "overrefusal": overrefusal}}))

    def running(value, step=3):
        return optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING,
                                         intermediate_values={step: value})

    pruner = FeasibleMedianPruner(targets, n_startup_trials=2, n_warmup_steps=3)
    for v in (100.0, 97.2, 94.4):
        done(v, overrefusal=50.0)  # refusers: miss the bound by 40
    assert pruner.feasible_values(study, 3) == []
    assert not pruner.prune(study, running(75.0))  # Optuna's MedianPruner would stop it (median 97.2)
    assert optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3).prune(study, running(75.0))
    done(80.0, overrefusal=0.0)
    assert not pruner.prune(study, running(75.0))  # one feasible trial: still too few to compare with
    done(90.0, overrefusal=5.0)
    assert sorted(pruner.feasible_values(study, 3)) == [80.0, 90.0]
    assert pruner.prune(study, running(84.9)) and not pruner.prune(study, running(85.0))
    assert not pruner.prune(study, running(10.0, step=1))  # before the warm-up steps


# --- a study on a tiny model --------------------------------------------------------------------------


@pytest.fixture()
def tiny_run(setup):
    """test_runner's tiny model and 6-case data file (the file is read as is: ``--split`` only labels it)."""
    cfg, tmp = setup
    return cfg.model, cfg.data, tmp


def _args(model_dir, data, out, trials):
    return [sys.executable, "-m", "detoxedit.cli", "tune", "--model", str(model_dir), "--data", str(data),
            "--split", "val", "--judge", "refusal", "--max-new-tokens", "6", "--overrefusal-items", "2",
            "--kqa-items", "2", "--hparam", "max_length=96", "--hparam", "step_size=fixed", "--no-prune",
            "--trials", str(trials), "--out", str(out)]


def test_tune_two_trials_resumes_after_a_kill_and_writes_settings_bench_takes(tiny_run):
    from detoxedit.settings import method_hparams

    model_dir, data, tmp = tiny_run
    out = tmp / "tune"
    args = _args(model_dir, data, out, trials=2)
    proc = subprocess.Popen(args, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 180

    def second_trial_started():
        dirs = [d for d in (out / "trials").glob("*") if (d / "records.jsonl").is_file()] if (out / "trials").is_dir() else []
        return len(dirs) == 2 and all(d.joinpath("records.jsonl").read_text().count("\n") >= 1 for d in dirs)

    while time.time() < deadline and not second_trial_started() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    study = optuna.load_study(study_name="detoxedit-tune", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING], \
        "the second trial should have been killed part-way"
    killed_dir = out / study.trials[1].user_attrs["run_dir"]
    before = [r["case_id"] for r in read_run_records(killed_dir)]
    assert 1 <= len(before) < 6

    rc = subprocess.run(args, env=os.environ.copy(), capture_output=True, text=True)
    assert rc.returncode == 0, rc.stdout + rc.stderr
    assert "was interrupted" in rc.stdout
    study = optuna.load_study(study_name="detoxedit-tune", storage=f"sqlite:///{out / 'study.db'}")
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 2 and finished[1].params == study.trials[1].params  # the killed setting, rerun
    lines = [json.loads(x)["case_id"] for x in (killed_dir / "records.jsonl").read_text().splitlines()]
    assert sorted(lines, key=int) == [str(i) for i in range(6)] and lines[:len(before)] == before  # none redone

    rows = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and sum(r["baseline"] for r in rows) == 1
    # the resumed trial's time counts the cases the killed process answered, not only the last process's
    killed_row = next(r for r in rows if out / r["run_dir"] == killed_dir)  # rerun as a new trial, same run
    case_times = sum(r["timings"]["total_s"] for r in read_run_records(killed_dir))
    assert killed_row["seconds"] >= case_times > 0
    assert all(r["metrics"]["n_cases"] == 6 and r["metrics"]["kqa_drop"] is not None for r in rows)
    # the other trial's DG-Avg change from the starting settings, paired over the 6 cases both ran
    base_row, other = (next(r for r in rows if r["baseline"] is b) for b in (True, False))
    assert base_row["change"] is None and other["change"]["n"] == 6
    assert other["change"]["value"] == pytest.approx(other["metrics"]["DG-Avg"] - base_row["metrics"]["DG-Avg"])
    assert "| vs start |" in (out / "tune.md").read_text()
    html = (out / "tune.html").read_text()
    assert "data:image/png;base64," in html and "Search space" in html
    # best.yaml is a full method config: bench --method-config loads it unchanged, with the best trial's values
    best = json.loads(json.dumps(rows[0]))
    hp, path = method_hparams("dinm", str(model_dir), out / "best.yaml")
    assert f"# trial run: {best['run_dir']} " in (out / "best.yaml").read_text()  # scripts/results.sh reads it
    for key, value in best["overrides"].items():
        assert getattr(hp, key) == value
    # a third run with more trials extends the same study; other settings in the same directory are refused
    rc = subprocess.run(args[:-3] + ["3", "--out", str(out), "--min-ds", "50"], env=os.environ.copy(),
                        capture_output=True, text=True)
    assert rc.returncode != 0 and "other settings (targets)" in rc.stderr


def test_tune_refuses_bad_input_before_loading_a_model(tiny_run, capsys):
    from detoxedit.cli import main

    model_dir, data, tmp = tiny_run
    out = tmp / "t"
    assert main(["tune", "--model", str(model_dir), "--data", str(data), "--judge", "refusal",
                 "--method", "self-reminder", "--trials", "2", "--out", str(out)]) != 0
    assert "declares no search space" in capsys.readouterr().err
    with pytest.raises(DetoxEditError, match="nothing to tune"):
        from detoxedit.tune.study import TuneOptions, run_tune
        fixed = {k: 1 for k in ("lr", "num_steps", "kl_factor", "harmless_kl", "layers", "distance",
                                "norm_constraint")}
        fixed["layers"], fixed["distance"], fixed["lr"] = [1], "euclidean", 1e-3
        run_tune(RunConfig(model=str(model_dir), data=str(data), split="val", judge="refusal",
                           hparams={**fixed, "step_size": "fixed"}), Targets(), TuneOptions(trials=1), out)
    assert not (out / "study.db").exists()


def test_runner_records_kqa_and_termination_and_a_shared_edit_is_checked_once(tiny_run):
    from detoxedit.bench.report import compute_metrics
    from detoxedit.bench.runner import run_bench

    model_dir, data, tmp = tiny_run
    cfg = RunConfig(model=str(model_dir), data=str(data), split="val", judge="refusal", max_new_tokens=6,
                    overrefusal_items=2, kqa_items=3, limit=2,
                    hparams={"num_steps": 1, "max_length": 96, "step_size": "fixed"})
    run_bench(cfg, tmp / "run", progress=False)
    recs = read_run_records(tmp / "run")
    assert all(len(r["kqa"]["edited_correct"]) == 3 and len(r["overrefusal"]["edited"]) == 2 for r in recs)
    assert set(recs[0]["ended"]["edited"]) == {"DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"}
    m = compute_metrics(recs, "refusal")
    assert m["kqa"]["n_answers"] == 6 and m["kqa"]["n_edits"] == 2
    flags = [not e for r in recs for e in r["ended"]["edited"].values()]
    assert m["cut"]["edited"]["n"] == 10 and m["cut"]["edited"]["cut"] == sum(flags)
    # Self-Reminder makes one shared edit: its checks are recorded once, in the run's first record
    shared = RunConfig(**{**cfg.to_dict(), "method": "self-reminder", "hparams": {}, "limit": 3})
    run_bench(shared, tmp / "run-sr", progress=False)
    recs = read_run_records(tmp / "run-sr")
    assert ["kqa" in r for r in recs] == [True, False, False]
    assert ["overrefusal" in r for r in recs] == [True, False, False]


def test_demo_says_whether_its_cases_can_tell_a_change_from_zero():
    from detoxedit.commands.demo import change_verdict

    m = {"n_cases": 18, "change": {"DS": {"value": 5.6, "ci_low": -11.1, "ci_high": 27.8},
                                   "DG-Avg": {"value": 20.0, "ci_low": 5.0, "ci_high": 33.0}}}
    lines = change_verdict(m).splitlines()
    assert "includes zero" in lines[0] and "18 cases cannot tell" in lines[0]
    assert "excludes zero" in lines[1] and "DG-Avg rose" in lines[1]


def test_a_person_s_labels_in_a_trial_run_re_rank_a_finished_study_without_the_model(tiny_run, monkeypatch):
    from detoxedit.bench.human import append_label
    from detoxedit.models import load as load_mod
    from detoxedit.tune.study import TuneOptions, run_tune

    model_dir, data, tmp = tiny_run
    cfg = RunConfig(model=str(model_dir), data=str(data), split="val", judge="refusal", max_new_tokens=6,
                    limit=2, overrefusal_items=1, kqa_items=1, hparams={"max_length": 96, "step_size": "fixed"})
    out = tmp / "tune"
    first = run_tune(RunConfig(**cfg.to_dict()), Targets(min_ds=None), TuneOptions(trials=1), out, echo=lambda s: None)
    best = first["best"]
    assert best["metrics"]["human_read"] == 0 and best["metrics"]["DS"] == 0.0  # the refusal judge: all unsafe
    run_dir = out / best["run_dir"]
    for case in ("0", "1"):  # a person reads both DS answers as safe
        append_label(run_dir, {"case_id": case, "side": "edited", "key": "DS", "label": 0, "who": "t"})
    monkeypatch.setattr(load_mod, "load_model", lambda *a, **k: pytest.fail("a finished study loaded the model"))
    again = run_tune(RunConfig(**cfg.to_dict()), Targets(min_ds=None), TuneOptions(trials=1), out, echo=lambda s: None)
    assert again["best"]["metrics"]["human_read"] == 2 and again["best"]["metrics"]["DS"] == 100.0
    assert json.loads((out / "trials.jsonl").read_text().splitlines()[0])["metrics"]["DS"] == 100.0


def test_a_try_setting_runs_right_after_the_starting_one_and_only_once(tiny_run):
    from detoxedit.tune.study import TuneOptions, run_tune

    model_dir, data, tmp = tiny_run
    cfg = RunConfig(model=str(model_dir), data=str(data), split="val", judge="refusal", max_new_tokens=4,
                    limit=1, overrefusal_items=1, kqa_items=1,
                    hparams={"max_length": 96, "step_size": "fixed", "num_steps": 1})
    out, tries = tmp / "tune", ("layer_rule=fixed,layers=2,lr=3e-4",)
    bad = TuneOptions(trials=2, tries=("layer_rule=fixed,layers=1",))
    with pytest.raises(DetoxEditError, match="layers must be an integer"):  # checked before any trial runs
        run_tune(RunConfig(**cfg.to_dict()), Targets(min_ds=None), bad, tmp / "bad", echo=lambda s: None)
    assert not (tmp / "bad" / "trials").exists()
    run_tune(RunConfig(**cfg.to_dict()), Targets(min_ds=None), TuneOptions(trials=2, tries=tries), out,
             echo=lambda s: None)
    study = optuna.load_study(study_name="detoxedit-tune", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.user_attrs.get("try") for t in study.trials] == [None, tries[0]]
    over = study.trials[1].user_attrs["overrides"]
    assert over["lr"] == 3e-4 and over["layers"] == [2] and "kl_factor" in over  # dimensions not named: drawn
    # a rerun with more trials does not queue the same try again: the third trial is the sampler's
    run_tune(RunConfig(**cfg.to_dict()), Targets(min_ds=None), TuneOptions(trials=3, tries=tries), out,
             echo=lambda s: None)
    study = optuna.load_study(study_name="detoxedit-tune", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3 and "try" not in study.trials[2].user_attrs
    assert "(--try)" in (out / "tune.md").read_text()


def test_confirmation_runs_the_best_and_the_start_on_questions_the_study_did_not_ask(tiny_run, monkeypatch):
    from detoxedit.bench.human import append_label
    from detoxedit.models import load as load_mod
    from detoxedit.tune.study import TuneOptions, confirm_config, run_tune

    model_dir, data, tmp = tiny_run
    # the 6 records ask 5 questions, one per category; record 5 asks record 0's question again
    cfg = RunConfig(model=str(model_dir), data=str(data), split="val", judge="refusal", max_new_tokens=4,
                    cases=["0", "1"], overrefusal_items=1, kqa_items=1,
                    hparams={"max_length": 96, "step_size": "fixed", "num_steps": 1})
    assert confirm_config(cfg, 1).cases == ["2", "3", "4"]  # not 5: the study asks its question (case 0)
    with pytest.raises(DetoxEditError, match="none is left to confirm on"):  # before any model work
        run_tune(RunConfig(**{**cfg.to_dict(), "cases": None}), Targets(min_ds=None),
                 TuneOptions(trials=1, confirm_per_category=1), tmp / "all", echo=lambda s: None)
    assert not (tmp / "all" / "trials").exists()
    out = tmp / "tune"
    first = run_tune(RunConfig(**cfg.to_dict()), Targets(min_ds=None), TuneOptions(trials=2, prune=False), out,
                     echo=lambda s: None)
    assert first["best"]["baseline"] and first["confirmation"] is None  # the start is best: nothing to confirm
    other = next(r for r in json.loads("[" + ",".join((out / "trials.jsonl").read_text().splitlines()) + "]")
                 if not r["baseline"])
    for case in ("0", "1"):  # a person reads the other trial's answers as safe: it becomes the best
        for key in ("DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"):
            append_label(out / other["run_dir"], {"case_id": case, "side": "edited", "key": key, "label": 0, "who": "t"})
    said = []
    summary = run_tune(RunConfig(**cfg.to_dict()), Targets(min_ds=None),
                       TuneOptions(trials=2, prune=False, confirm_per_category=1), out, echo=said.append)
    assert summary["best"]["number"] == other["number"] and len(said) == 2  # both settings confirmed
    conf = summary["confirmation"]
    assert conf["change"]["n"] == 3 and conf["dirs"][1] == "confirm/" + other["run_dir"].split("/")[-1]
    for d in conf["dirs"]:
        assert [r["case_id"] for r in read_run_records(out / d)] == ["2", "3", "4"]
    assert conf["change"]["value"] == pytest.approx(conf["best"] - conf["start"])
    assert "cases of questions the study did not ask" in (out / "tune.md").read_text()
    assert "# on 3 cases of questions the study did not ask" in (out / "best.yaml").read_text()
    # a rerun finds both confirmation runs done: no model is loaded, the page still reports them
    monkeypatch.setattr(load_mod, "load_model", lambda *a, **k: pytest.fail("a confirmed study loaded the model"))
    again = run_tune(RunConfig(**cfg.to_dict()), Targets(min_ds=None),
                     TuneOptions(trials=2, prune=False, confirm_per_category=1), out, echo=lambda s: None)
    assert again["confirmation"]["change"] == conf["change"]
    # scripts/keep_study.sh keeps the confirmation runs too: a study put back reports the same change
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "keep_study.sh"
    for mode, src, dst in (("save", out, tmp / "kept"), ("restore", tmp / "kept", tmp / "back")):
        assert subprocess.run(["bash", str(script), mode, str(src), str(dst)], capture_output=True).returncode == 0
    back = run_tune(RunConfig(**cfg.to_dict()), Targets(min_ds=None),
                    TuneOptions(trials=2, prune=False, confirm_per_category=1), tmp / "back", echo=lambda s: None)
    assert back["confirmation"]["change"] == conf["change"]


def test_a_study_saved_before_a_run_setting_existed_resumes_and_result_neutral_settings_may_change(tmp_path):
    import yaml

    from detoxedit.tune.study import TuneOptions, save_study_doc, study_doc

    cfg = RunConfig(model="m", data="d", split="val")
    doc = study_doc(cfg, Targets(), TuneOptions(), [])
    save_study_doc(tmp_path, doc)
    saved = yaml.safe_load((tmp_path / "tune.yaml").read_text())
    del saved["run"]["batch_cases"]  # as a study written before the setting existed
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(saved))
    save_study_doc(tmp_path, doc)  # the missing setting counts as its default
    save_study_doc(tmp_path, study_doc(RunConfig(**{**cfg.to_dict(), "batch_cases": 4, "batch_size": 2}),
                                       Targets(), TuneOptions(), []))  # does not change results
    with pytest.raises(DetoxEditError, match=r"other settings \(run\)"):
        save_study_doc(tmp_path, study_doc(RunConfig(**{**cfg.to_dict(), "max_new_tokens": 7}),
                                           Targets(), TuneOptions(), []))


def test_a_changed_unsearched_setting_is_refused_naming_it_and_a_searched_one_is_not(tmp_path):
    """The built-in config may change between two runs of a study (the embedded model's DINM config did):
    settings a dimension searches are stated by every trial, the others are the study's and must not move."""
    import yaml

    from detoxedit.tune.space import Dim
    from detoxedit.tune.study import TuneOptions, fixed_settings, save_study_doc, study_doc

    cfg = RunConfig(model="m", data="d", split="val")
    space = [Dim("lr", "float", 1e-4, 1e-2, log=True)]
    base = {"lr": 1e-3, "max_length": 1000, "kl_factor": 0.1}
    assert fixed_settings(base, space) == {"kl_factor": 0.1, "max_length": 1000}
    save_study_doc(tmp_path, study_doc(cfg, Targets(), TuneOptions(), space, fixed_settings(base, space)))
    save_study_doc(tmp_path, study_doc(cfg, Targets(), TuneOptions(), space,
                                       fixed_settings({**base, "lr": 8e-4}, space)))  # searched: resumes
    with pytest.raises(DetoxEditError, match=r"unsearched method settings differ.*kl_factor 0\.1 there, 0\.29 now"):
        save_study_doc(tmp_path, study_doc(cfg, Targets(), TuneOptions(), space,
                                           fixed_settings({**base, "kl_factor": 0.29}, space)))
    saved = yaml.safe_load((tmp_path / "tune.yaml").read_text())
    del saved["fixed"]  # a study saved before the settings were recorded resumes, and records them
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(saved))
    save_study_doc(tmp_path, study_doc(cfg, Targets(), TuneOptions(), space,
                                       fixed_settings({**base, "kl_factor": 0.29}, space)))
    assert yaml.safe_load((tmp_path / "tune.yaml").read_text())["fixed"]["kl_factor"] == 0.29


def test_a_trial_s_time_counts_its_cases_and_its_training_whichever_process_did_them(tmp_path):
    from detoxedit.tune.study import trial_seconds

    run_dir = tmp_path / "trial"
    (run_dir / "artifact").mkdir(parents=True)
    records = [{"case_id": str(i), "timings": {"total_s": t}} for i, t in enumerate([2.0, 3.5])]
    cfg = RunConfig(method="sft")
    # resumed: this process trained nothing (the artefact was reused) and answered one case in 4 s:
    # 2.0 + 3.5 of cases + 10 of training = 15.5
    (run_dir / "artifact" / "artifact.json").write_text(json.dumps({"train_seconds": 10.0}))
    assert trial_seconds(cfg, run_dir, records, 4.0) == pytest.approx(15.5)
    # all in this process, with work outside the cases (over-refusal, KQA): the process's own time is larger
    assert trial_seconds(cfg, run_dir, records, 20.0) == pytest.approx(20.0)
    # no artefact (an editing method): the cases alone; no records yet: the process's time
    (run_dir / "artifact" / "artifact.json").unlink()
    assert trial_seconds(cfg, run_dir, records, 1.0) == pytest.approx(5.5)
    assert trial_seconds(cfg, tmp_path / "none", [], 1.0) == pytest.approx(1.0)


def test_a_study_kept_by_the_script_is_put_back_and_re_ranks_without_the_model(tiny_run, monkeypatch):
    """scripts/keep_study.sh: the committable copy holds what the study's numbers rest on, not the trained or
    saved artefacts, and a study put back from it is the same study (a rerun re-ranks it without the model)."""
    from pathlib import Path

    from detoxedit.models import load as load_mod
    from detoxedit.tune.study import TuneOptions, run_tune

    model_dir, data, tmp = tiny_run
    script = Path(__file__).resolve().parents[1] / "scripts" / "keep_study.sh"
    cfg = RunConfig(model=str(model_dir), data=str(data), split="val", judge="refusal", max_new_tokens=4,
                    limit=2, overrefusal_items=1, kqa_items=1, hparams={"max_length": 96, "step_size": "fixed"})
    out = tmp / "tune"
    first = run_tune(RunConfig(**cfg.to_dict()), Targets(min_ds=None), TuneOptions(trials=1), out, echo=lambda s: None)
    trial_dir = out / first["best"]["run_dir"]
    (trial_dir / "artifact").mkdir()
    (trial_dir / "artifact" / "delta.pt").write_bytes(b"x" * 10)  # as a trained method's artefact
    kept, back = tmp / "kept", tmp / "back"
    for mode, src, dst in (("save", out, kept), ("restore", kept, back)):
        rc = subprocess.run(["bash", str(script), mode, str(src), str(dst)], capture_output=True, text=True)
        assert rc.returncode == 0, rc.stderr
    key = trial_dir.name
    assert sorted(p.name for p in (kept / "trials" / key).iterdir()) == ["config.yaml", "records.jsonl"]
    assert {"study.db", "tune.yaml", "trials.jsonl", "best.yaml"} <= {p.name for p in kept.iterdir()}
    rc = subprocess.run(["bash", str(script), "restore", str(kept), str(back)], capture_output=True, text=True)
    assert rc.returncode == 2 and "already holds a study" in rc.stderr  # never over a study

    monkeypatch.setattr(load_mod, "load_model", lambda *a, **k: pytest.fail("a finished study loaded the model"))
    again = run_tune(RunConfig(**cfg.to_dict()), Targets(min_ds=None), TuneOptions(trials=1), back, echo=lambda s: None)
    assert again["best"]["overrides"] == first["best"]["overrides"]
    assert again["best"]["metrics"]["DS"] == first["best"]["metrics"]["DS"]
    assert again["best"]["metrics"]["n_cases"] == 2
