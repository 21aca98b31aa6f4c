"""A method's search space (``SEARCH_SPACE`` of :class:`detoxedit.methods._hparams.Dim`) as Optuna
suggestions, and back: the dimension values a trial draws, the hyper-parameter overrides they mean, and
the dimension values of the starting settings (so the hand-set config runs as the first trial).

Dimensions fixed by the user (``--hparam KEY=VALUE`` naming a field a dimension sets) are left out of
the search: the user's value holds in every trial.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from detoxedit.errors import DetoxEditError
from detoxedit.methods._hparams import Dim


def layer_range(dim: Dim, n_layers: int) -> tuple[int, int]:
    """The block indices a ``layer`` dimension covers: from ``low`` x (last index), rounded up, to the last."""
    last = n_layers - 1
    return min(last, math.ceil((dim.low or 0.0) * last)), last


def assigned_fields(dim: Dim) -> set[str]:
    """The hyper-parameter fields a dimension writes."""
    if dim.kind == "choice" and dim.sets is not None:
        return {f for assignment in dim.sets.values() for f in assignment}
    return {dim.name}


def always_assigned(dim: Dim) -> set[str]:
    """The fields a dimension writes in every trial: none when it is only sampled under a condition
    (``when``), the fields every choice assigns for a choice with ``sets``; otherwise its own field."""
    if dim.when is not None:
        return set()
    if dim.kind == "choice" and dim.sets is not None:
        return set.intersection(*(set(dim.sets.get(c, {})) for c in dim.choices))
    return {dim.name}


def active_space(space: Sequence[Dim], base: dict[str, Any], fixed: Sequence[str] = ()) -> list[Dim]:
    """The dimensions searched: those whose ``if_base`` holds for the starting settings ``base`` and none
    of whose fields the user fixed (``fixed``); a dimension conditional (``when``) on a dropped one goes
    too."""
    fixed = set(fixed)
    out: list[Dim] = []
    for dim in space:
        if dim.if_base is not None and base.get(dim.if_base[0]) != dim.if_base[1]:
            continue
        if assigned_fields(dim) & fixed:
            continue
        if dim.when is not None and dim.when[0] not in {d.name for d in out}:
            continue
        out.append(dim)
    return out


def suggest(trial, space: Sequence[Dim], n_layers: int) -> dict[str, Any]:
    """Draw one value per active dimension from an Optuna ``trial`` (define-by-run, so conditional
    dimensions are drawn only when their condition holds)."""
    params: dict[str, Any] = {}
    for dim in space:
        if dim.when is not None and params.get(dim.when[0]) != dim.when[1]:
            continue
        if dim.kind == "float":
            params[dim.name] = trial.suggest_float(dim.name, dim.low, dim.high, log=dim.log)
        elif dim.kind == "int":
            params[dim.name] = trial.suggest_int(dim.name, int(dim.low), int(dim.high), log=dim.log)
        elif dim.kind == "layer":
            lo, hi = layer_range(dim, n_layers)
            params[dim.name] = trial.suggest_int(dim.name, lo, hi)
        elif dim.kind == "choice":
            params[dim.name] = trial.suggest_categorical(dim.name, list(dim.choices))
        else:
            raise DetoxEditError(f"search space: unknown kind {dim.kind!r} of {dim.name!r}")
    return params


def overrides(params: dict[str, Any], space: Sequence[Dim]) -> dict[str, Any]:
    """The hyper-parameter overrides a trial's dimension values mean (``layer`` -> ``[index]``; a choice
    with ``sets`` -> its assignment)."""
    out: dict[str, Any] = {}
    for dim in space:
        if dim.name not in params:
            continue
        value = params[dim.name]
        if dim.kind == "layer":
            out[dim.name] = [int(value)]
        elif dim.kind == "choice" and dim.sets is not None:
            out.update(dim.sets.get(value, {}))
        else:
            out[dim.name] = value
    return out


def format_overrides(over: dict[str, Any]) -> str:
    """``lr=0.000106, layers=[], ...``: a trial's overrides in one line (floats to 3 significant digits)."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in over.items())


def base_params(base: dict[str, Any], space: Sequence[Dim], n_layers: int) -> dict[str, Any]:
    """The dimension values that reproduce the starting settings ``base`` (a resolved hyper-parameter
    dict), for the first trial. A dimension whose value the base cannot be expressed in (e.g. a layer
    outside the range, a choice not offered) is left out: the sampler draws it."""
    params: dict[str, Any] = {}
    for dim in space:
        if dim.when is not None and params.get(dim.when[0]) != dim.when[1]:
            continue
        if dim.kind == "choice" and dim.sets is not None:
            match = [c for c, a in dim.sets.items() if all(base.get(k) == v for k, v in a.items())]
            unset = [c for c in dim.choices if c not in dim.sets]
            if match:
                params[dim.name] = match[0]
            elif unset:  # a choice that assigns nothing stands for "anything else", e.g. a fixed layer
                params[dim.name] = unset[0]
            continue
        value = base.get(dim.name)
        if dim.kind == "layer":
            lo, hi = layer_range(dim, n_layers)
            if isinstance(value, list) and len(value) == 1 and lo <= int(value[0]) <= hi:
                params[dim.name] = int(value[0])
        elif dim.kind == "choice":
            if value in dim.choices:
                params[dim.name] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and dim.low <= value <= dim.high:
            params[dim.name] = int(value) if dim.kind == "int" else float(value)
    return params


def parse_try(text: str, space: Sequence[Dim], n_layers: int) -> dict[str, Any]:
    """``--try 'layer_rule=fixed,layers=16'``: the dimension values of one setting to run early (Optuna
    ``enqueue_trial``), checked against the active ``space``: a name that is not searched, a value outside
    its range or choices, or a conditional dimension without its condition fails with one line."""
    from detoxedit.settings import parse_assignments

    dims = {d.name: d for d in space}
    params: dict[str, Any] = {}
    parts = [p.strip() for p in text.split(",") if p.strip()]
    for part in parts:
        if "=" not in part:
            raise DetoxEditError(f"--try {text!r}: {part!r} is not NAME=VALUE")
    for name, value in parse_assignments(parts, flag="--try").items():
        if name not in dims:
            raise DetoxEditError(f"--try {text!r}: {name!r} is not a searched dimension "
                                 f"(searched: {', '.join(dims) or 'none'})")
        dim = dims[name]
        if dim.kind == "choice":
            if value not in dim.choices:
                raise DetoxEditError(f"--try {text!r}: {name} must be one of {', '.join(map(str, dim.choices))}")
        else:
            if isinstance(value, list) and len(value) == 1:  # layers=[16] reads like the hparam
                value = value[0]
            if isinstance(value, str):  # YAML reads 2e-4 as text
                try:
                    value = float(value)
                except ValueError:
                    pass
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DetoxEditError(f"--try {text!r}: {name} must be a number, not {value!r}")
            lo, hi = layer_range(dim, n_layers) if dim.kind == "layer" else (dim.low, dim.high)
            if not lo <= value <= hi or (dim.kind in ("int", "layer") and value != int(value)):
                kind = "an integer" if dim.kind in ("int", "layer") else "a number"
                raise DetoxEditError(f"--try {text!r}: {name} must be {kind} in [{lo:g}, {hi:g}]")
            value = float(value) if dim.kind == "float" else int(value)
        params[name] = value
    for dim in space:
        if dim.when is not None and dim.name in params and params.get(dim.when[0]) != dim.when[1]:
            raise DetoxEditError(f"--try {text!r}: {dim.name} applies only with {dim.when[0]}={dim.when[1]}")
    if not params:
        raise DetoxEditError("--try: no NAME=VALUE given")
    return params


def describe(space: Sequence[Dim], n_layers: int | None = None) -> list[str]:
    """One line per dimension, for the tuning page and ``--help``-style listings."""
    lines = []
    for dim in space:
        if dim.kind in ("float", "int"):
            text = f"{dim.name}: {dim.kind} in [{dim.low:g}, {dim.high:g}]" + (" (log scale)" if dim.log else "")
        elif dim.kind == "layer":
            rng = f"[{layer_range(dim, n_layers)[0]}, {n_layers - 1}]" if n_layers else f"from {dim.low:.0%} of the depth"
            text = f"{dim.name}: one block {rng}"
        else:
            text = f"{dim.name}: one of {', '.join(str(c) for c in dim.choices)}"
        if dim.when is not None:
            text += f" (when {dim.when[0]} = {dim.when[1]})"
        lines.append(text)
    return lines
