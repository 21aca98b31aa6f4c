"""``detoxedit train``: train a method that learns on a split first (MEND, SFT, DPO, Ext-Sub).

The artefact (hypernetwork, adapters, fine-tuned weights) is written to ``--out`` with a manifest of
what it was trained on; ``detoxedit bench --method KEY --artifact DIR`` then reuses it. ``bench``
also trains on its own when the artefact is missing, so this command is for training once and
evaluating many times (or on another machine). The run flags mean what they mean in ``bench``.
"""

from __future__ import annotations

import argparse

from detoxedit.commands import COMMANDS

TRAIN_FLAGS = ("model", "dtype", "device", "device_map", "method", "method_config", "hparams", "data",
               "train_split", "train_limit", "max_new_tokens", "prompt_format", "batch_size", "seed")


@COMMANDS.register("train", order=40)
def register(sub) -> None:
    from detoxedit.settings import add_run_arguments

    p = sub.add_parser("train", help="train MEND / SFT / DPO / Ext-Sub on a split and save the artefact",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, only=TRAIN_FLAGS)
    p.add_argument("--out", required=True, help="artefact directory (same as bench --artifact)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import torch

    from detoxedit.bench.training import ensure_artifact
    from detoxedit.errors import DetoxEditError
    from detoxedit.methods.base import needs_training
    from detoxedit.models.load import load_model
    from detoxedit.preflight import check_run
    from detoxedit.settings import prepare_method, run_config

    cfg = run_config(args)
    cfg.artifact = args.out
    method = prepare_method(cfg)
    if not needs_training(method.editor):
        raise DetoxEditError(f"method {cfg.method!r} has nothing to train; run it with detoxedit bench")
    check_run(cfg, judge=False, splits=[cfg.train_split])  # data, layers: before the model loads
    torch.manual_seed(cfg.seed)
    model, tok = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map)
    path = ensure_artifact(method, cfg, Path(args.out).parent, model, tok, progress=not args.no_progress)
    print(f"artefact: {path}\nnext: detoxedit bench --method {cfg.method} --artifact {path} --out RUN_DIR")
    return 0
