"""``detoxedit tune``: a method's settings chosen on the validation split with Optuna (docs/tuning.md).

* :mod:`detoxedit.tune.space`: a method's declared search space (``SEARCH_SPACE`` beside its
  hyper-parameter dataclass) as Optuna suggestions and hyper-parameter overrides;
* :mod:`detoxedit.tune.objective`: a trial's metrics from its run records and the constrained objective
  (maximise DG-Avg subject to DS, over-refusal, KQA, fluency and termination bounds);
* :mod:`detoxedit.tune.study`: the resumable study, every trial a ``bench`` run;
* :mod:`detoxedit.tune.page`: the trial table and Pareto plots.
"""
