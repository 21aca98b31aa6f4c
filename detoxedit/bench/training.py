"""Trained artefacts of methods that learn on a split first (MEND, SFT, DPO, Ext-Sub).

``ensure_artifact`` gives the runner (and ``detoxedit train``) one rule: the artefact lives in
``cfg.artifact`` (default ``RUN_DIR/artifact``); if it is there and was trained with the same model,
method, hyper-parameters and training data, it is loaded; otherwise the method is trained on
``cfg.train_split`` and the artefact is written to ``DIR.partial`` and renamed into place, so a killed
training never leaves a half-written artefact that a later run would trust.

``artifact.json`` beside the method's own files records what it was trained on, the training log and
the package versions.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from detoxedit.config import RunConfig
from detoxedit.errors import DetoxEditError
from detoxedit.io import atomic_write_json

log = logging.getLogger(__name__)

MANIFEST = "artifact.json"


def artifact_dir(cfg: RunConfig, run_dir: Path) -> Path:
    return Path(cfg.artifact).expanduser() if cfg.artifact else Path(run_dir) / "artifact"


def training_identity(cfg: RunConfig) -> dict:
    """What a trained artefact depends on; a reused artefact must match all of it."""
    return {"method": cfg.method, "model": cfg.model, "dtype": cfg.dtype, "hparams": cfg.hparams,
            "data": str(cfg.data), "train_split": cfg.train_split, "train_limit": cfg.train_limit,
            "prompt_format": cfg.prompt_format, "seed": cfg.seed}


def train_cases(cfg: RunConfig) -> list:
    """The train split's records as ``EditCase`` values (safe and, where present, unsafe responses)."""
    from detoxedit.cases import to_edit_case
    from detoxedit.data.load import load_split

    records = load_split(cfg.data, cfg.train_split)
    if cfg.train_limit is not None:
        records = records[: cfg.train_limit]
    if not records:
        raise DetoxEditError(f"{cfg.data}: the {cfg.train_split} split has no records to train on")
    return [to_edit_case(r, str(cfg.data), i) for i, r in enumerate(records)]


def read_manifest(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DetoxEditError(f"{path / MANIFEST}: cannot read the artefact's manifest ({e})") from None


def ensure_artifact(method, cfg: RunConfig, run_dir: Path, model, tok, progress: bool = True) -> Path:
    """Load the method's trained artefact, training and saving it first when it does not exist yet.

    ``method`` is the runner's ``PreparedMethod``; its editor has ``fit``, ``save_artifact`` and
    ``load_artifact``. The model's weights are as they were when this returns.
    """
    from detoxedit.config import versions

    editor = method.editor
    target = artifact_dir(cfg, run_dir)
    want = training_identity(cfg)
    if (target / MANIFEST).is_file():
        have = read_manifest(target).get("trained_on", {})
        diff = sorted(k for k in want if have.get(k) != want[k])
        if diff:
            raise DetoxEditError(f"{target} was trained with other settings ({', '.join(diff)}); "
                                 "pass another --artifact directory, or the same settings to reuse it")
        log.info("reusing the trained %s artefact in %s", cfg.method, target)
        editor.load_artifact(target)
        return target
    if target.exists() and any(target.iterdir()):
        raise DetoxEditError(f"{target} exists but holds no {MANIFEST}; not overwriting it")

    cases = train_cases(cfg)
    log.info("training %s on %d %s cases of %s", cfg.method, len(cases), cfg.train_split, cfg.data)
    t0 = time.perf_counter()
    train_log = editor.fit(model, tok, cases, progress=progress)
    seconds = time.perf_counter() - t0
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    editor.save_artifact(partial)
    doc = {"trained_on": want, "n_cases": len(cases), "train_seconds": seconds,
           "log": train_log or {}, "versions": versions()}
    atomic_write_json(partial / MANIFEST, doc, default=str)
    if target.exists():
        target.rmdir()  # empty (checked above)
    partial.rename(target)
    log.info("trained %s in %.0f s; artefact: %s", cfg.method, seconds, target)
    return target
