"""Median pruning against the trials that met every bound.

Optuna's :class:`optuna.pruners.MedianPruner` compares a running trial's objective with the median of all
earlier finished trials at the same step. Under constraints that is the wrong reference: a setting that
refuses everything reaches DG-Avg 100 and misses the over-refusal and KQA bounds, and the median of such
trials then stops every setting that trades some DG-Avg for meeting the bounds, which is the setting the
study is looking for. (It happened: an SFT study on the embedded model pruned its only trial on track to
meet every bound, DG-Avg 75 after 3 cases with no harmless prompt refused, below the median of three
refusers at 94-100 that missed two bounds each.)

:class:`FeasibleMedianPruner` is Optuna's median rule with the reference set restricted to completed trials
that met every bound (:func:`objective.violations` of the metrics each trial stored when it ended); with
fewer than ``n_startup_trials`` of them it prunes nothing. It plugs into Optuna's own pruning interface
(``Trial.should_prune``), so the study, storage and sampler are Optuna's, unchanged.
"""

from __future__ import annotations

import statistics

import optuna

from detoxedit.tune.objective import Targets, violations


class FeasibleMedianPruner(optuna.pruners.BasePruner):
    """Prune a trial whose running objective at step ``s`` is below the median, at ``s``, of the completed
    trials that met every bound of ``targets`` (maximising). No pruning before ``n_warmup_steps`` steps or
    while fewer than ``n_startup_trials`` feasible trials exist."""

    def __init__(self, targets: Targets, n_startup_trials: int = 2, n_warmup_steps: int = 3):
        self.targets = targets
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def feasible_values(self, study: optuna.Study, step: int) -> list[float]:
        """Objective values at ``step`` of the completed trials that met every bound."""
        out = []
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            metrics = t.user_attrs.get("metrics")
            if not metrics or violations(metrics, self.targets):  # (stale trials are failed, never complete)
                continue
            value = t.intermediate_values.get(step)
            if value is not None:
                out.append(float(value))
        return out

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        reference = self.feasible_values(study, step)
        if len(reference) < self.n_startup_trials:
            return False
        return trial.intermediate_values[step] < statistics.median(reference)
