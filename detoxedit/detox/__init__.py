"""One detoxified model from the edits of N cases (``detoxedit detox``; docs/detox.md).

``bench`` measures each edit alone and reverts it; ``detox`` keeps them: it edits a model on N cases of a
split and saves the result as an ordinary Hugging Face checkpoint with a model card.

* :mod:`detoxedit.detox.run`: the job. Checks every argument before any model work (:func:`plan_detox`),
  then combines the cases' edits ``sequential`` (each case edited on the model as the previous kept edits
  left it; an edit that fails validation is reverted and skipped) or ``joint`` (one delta trained on all
  cases at once: ``detoxedit.methods.dinm.joint_edit``), resumes a killed run, and writes the checkpoint
  atomically.
* :mod:`detoxedit.detox.card`: the model card (``README.md``) and the atomic checkpoint write.
* :mod:`detoxedit.detox.evaluate`: a saved detoxified checkpoint against its base model on a split with the
  bench's own per-case code (DS, DG, fluency) and the general-ability tasks (KQA, CSum, over-refusal);
  ``scripts/detox_curve.py`` runs it for every N.

Importing this package imports none of its modules (``detoxedit detox --help`` loads no torch).
"""
