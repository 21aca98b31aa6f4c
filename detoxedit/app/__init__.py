"""``detoxedit app``: a local web app (Gradio) over the same code the commands run.

Three tabs: **Edit** (one edit on one prompt, as ``detoxedit edit``), **Runs** (read a run's answers
and set human labels, as ``detoxedit label``, with the metrics updated) and **Compare** (the table of
``detoxedit compare``, with a plot).

The page logic lives in plain functions that know nothing of Gradio, so it is tested without a
browser: :mod:`detoxedit.app.editing` (the model session and one edit), :mod:`detoxedit.app.runs`
(run directories, answers, labels, metrics, comparison) and :mod:`detoxedit.app.charts` (matplotlib
figures). Only :mod:`detoxedit.app.ui` imports Gradio, and only ``detoxedit app`` imports it
(``pip install 'detoxedit[app]'``).
"""
