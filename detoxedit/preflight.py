"""Check a run's arguments before any model work, so a typo fails in a second with one line.

Loading a model and generating its vanilla answers takes seconds to minutes; a bad argument found after
that wastes them. :func:`check_run` looks at everything a run's settings name without loading a model:

* the method key and its hyper-parameters (:func:`detoxedit.settings.prepare_method`, which refuses
  unknown keys and bad values, run on a copy so the caller's ``RunConfig`` is untouched);
* the judge spec (building a judge is cheap: every judge loads its model on first use);
* the data and its split (a local file or directory is read and validated; ``builtin`` is only checked
  for a valid split name, since a split not shipped is built on first use; the selected case ids);
* every configured layer (a method's ``layers`` setting) against the number of decoder blocks the model's
  *config* declares (:func:`detoxedit.models.load.num_layers_of`; skipped when it cannot be told
  without the network).

Every problem is a :class:`~detoxedit.errors.DetoxEditError`, which the CLI prints as one line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from detoxedit.config import RunConfig
from detoxedit.errors import DetoxEditError

COUNTS_FROM_END = frozenset({"mend"})
"""Methods whose ``layers`` may be negative, counted from the last block (``mend.resolve_layers``);
every other method's layers are block indices ``0..n-1`` (``arch.down_proj``, ``arch.projection_paths``)."""


def check_run(cfg: RunConfig, *, judge: bool = True, splits: Sequence[str] | None = None) -> None:
    """Refuse ``cfg`` before anything is loaded or generated (see the module docstring).

    ``judge``: also check ``cfg.judge`` (commands that judge nothing pass False). ``splits``: the splits
    of ``cfg.data`` the command reads; None means the run's own: ``cfg.split``, and ``cfg.train_split``
    when the method trains and no trained artefact exists yet; ``()`` checks no data.
    """
    from detoxedit.methods.base import needs_training
    from detoxedit.settings import prepare_method

    work = dataclasses.replace(cfg, hparams=dict(cfg.hparams))  # prepare_method writes back into its cfg
    method = prepare_method(work)  # unknown method, unknown or bad hyper-parameters
    if splits is None:
        splits = [cfg.split]
        if needs_training(method.editor) and not (cfg.artifact and Path(cfg.artifact).expanduser().is_dir()):
            splits.append(cfg.train_split)
    for split in dict.fromkeys(splits):
        check_data(cfg.data, split, cfg if split == cfg.split else None)
    if judge:
        check_judge(cfg.judge)
    check_layers(cfg.model, cfg.method, method.hparams, overrides=cfg.hparams, source=work.method_config)


def check_judge(spec: str) -> None:
    """Build the judge ``spec`` names (cheap: judges load their models on first use), so an unknown key,
    option or a missing default-judge head fails now."""
    from detoxedit.judges import get_judge

    get_judge(spec)


def check_data(data: str, split: str, cfg: RunConfig | None = None) -> None:
    """``split`` of ``data`` exists and reads cleanly (errors name file, record and field); with ``cfg``,
    its ``--cases`` ids are in it too. The built-in benchmark is read only when its split is shipped
    prebuilt (otherwise it is built on first use, which needs a model)."""
    from detoxedit.data.builtin import prebuilt_split
    from detoxedit.data.load import load_split
    from detoxedit.data.records import canonical_split

    split = canonical_split(split)
    if str(data) == "builtin":
        records = prebuilt_split(split) if split != "test_ALL" else None
    else:
        records = load_split(data, split)
    if records is not None and cfg is not None and cfg.cases:
        from detoxedit.cases import select_records

        select_records(records, cfg)


def configured_layers(hparams) -> list:
    """The block indices a method's settings name: its ``layers`` list (none for a method that locates
    or traces its layer per case, nor for one without such a setting)."""
    layers = getattr(hparams, "layers", None)
    if not isinstance(layers, list):
        return []
    if getattr(hparams, "layer_selection", "configured") != "configured":  # FT-L's causal trace
        return []
    return layers


def check_layers(model: str, method: str, hparams, overrides: dict | None = None,
                 source: str | None = None) -> None:
    """Every configured layer is a block of ``model`` (counted from its config, not its weights)."""
    layers = configured_layers(hparams)
    if not layers:
        return
    from detoxedit.models.load import num_layers_of

    n = num_layers_of(model)
    if n is None:  # cannot be told without the network: the load will
        return
    from_end = method in COUNTS_FROM_END
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise DetoxEditError(f"{method} layers must be block indices (integers), not {layer!r}")
        if not (-n <= layer < n if from_end else 0 <= layer < n):
            valid = f"0-{n - 1}" + (f", or -{n} to -1 from the end" if from_end else "")
            raise DetoxEditError(f"layer {layer} is out of range: model {model!r} has {n} layers ({valid}); "
                                 f"{_where(layers, overrides, source)}")


def _where(layers: list, overrides: dict | None, source: str | None) -> str:
    if overrides and "layers" in overrides:
        return f"set by layers={overrides['layers']} (--hparam, edit's --layer, or a run config's hparams)"
    if source:
        return f"set by layers: {layers} in {source}"
    return f"the method's default layers {layers}"


def check_artifact(method: str, cls, artifact: str | None) -> None:
    """A trained method (MEND) needs ``--artifact DIR`` that exists; a method that is not trained refuses one."""
    from detoxedit.methods.base import needs_training

    if needs_training(cls):
        if not artifact:
            raise DetoxEditError(f"method {method!r} needs a trained artefact: run `detoxedit train --method "
                                 f"{method} --out DIR` first, then pass --artifact DIR")
        if not Path(artifact).expanduser().is_dir():
            raise DetoxEditError(f"--artifact {artifact} does not exist; train it with `detoxedit train "
                                 f"--method {method} --out {artifact}`")
    elif artifact:
        raise DetoxEditError(f"method {method!r} is not trained, so --artifact does not apply")
