"""The one settings path: built-in defaults <- a YAML file <- command-line overrides.

Every command (``edit``, ``bench``, ``train``, ``demo``, ``general``, and later ``tune``) resolves settings
here, so a file that loads in one command loads in all of them, an unknown key gives the same error
everywhere, and a flag means the same thing in every command:

* :func:`method_hparams` resolves a method's hyper-parameters: the dataclass defaults, then the method's
  YAML (``--method-config``; for ``--model default`` the built-in ``configs/METHOD/smollm2-135m.yaml``),
  then ``--hparam KEY=VALUE`` overrides.
* :func:`add_run_arguments` generates the run flags (``--model``, ``--dtype``, ``--limit`` ...) from the
  fields of :class:`~detoxedit.config.RunConfig`, with the help text declared on each field, and
  :func:`run_config` turns parsed flags into a ``RunConfig`` (the run YAML ``--config``, then the flags).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Iterable, Sequence

from detoxedit.config import RunConfig
from detoxedit.errors import DetoxEditError

DEFAULT_MODEL_CONFIG = "smollm2-135m"
"""The built-in config name used for ``--model default`` (``configs/METHOD/smollm2-135m.yaml``)."""


# --- KEY=VALUE overrides -----------------------------------------------------------------------------

def parse_assignments(items: Iterable[str] | None, flag: str = "--hparam") -> dict[str, Any]:
    """``["lr=1e-4", "layers=[3]"]`` -> ``{"lr": 0.0001, "layers": [3]}`` (each value read as YAML; an
    empty value is None)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DetoxEditError(f"{flag} must look like KEY=VALUE, not {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


# --- a method's hyper-parameters ---------------------------------------------------------------------

def default_method_config(method: str, model: str) -> Path | None:
    """The built-in YAML for ``method`` when ``model`` is the embedded default, else None."""
    from detoxedit.configs import builtin_config_path

    if model != "default":
        return None
    try:
        return builtin_config_path(method, DEFAULT_MODEL_CONFIG)
    except DetoxEditError:
        return None


def method_hparams(method: str, model: str = "default", config: str | Path | None = None,
                   overrides: dict[str, Any] | None = None):
    """``(hparams, config_path)`` of ``method``: defaults <- ``config`` (or the built-in file for the
    default model) <- ``overrides``. A method without hyper-parameters returns ``(None, None)`` and
    refuses a config or overrides. Unknown keys fail with the file or ``--hparam`` named."""
    from detoxedit.methods.base import get_method

    hp_cls = getattr(get_method(method), "hparams_class", None)
    overrides = dict(overrides or {})
    if hp_cls is None:
        given = (["a method config"] if config else []) + sorted(overrides)
        if given:
            raise DetoxEditError(f"method {method!r} has no hyper-parameters, so {', '.join(given)} "
                                 "do(es) not apply")
        return None, None
    path = Path(config) if config else default_method_config(method, model)
    raw = hp_cls.read_yaml(path) if path else {}
    hp_cls.check_keys(overrides, source="--hparam")
    raw.update(overrides)
    source = f"{path} (with --hparam overrides)" if path and overrides else str(path or "--hparam")
    return hp_cls.from_dict(raw, source=source), path


# --- run flags, generated from RunConfig -------------------------------------------------------------

def run_flag_help(name: str, role: str = "") -> str:
    """The help text of run setting ``name`` (a ``RunConfig`` field), with what it is for in a command
    that declares the flag itself (``report --judge``), so the flag reads the same everywhere."""
    field = next(f for f in dataclasses.fields(RunConfig) if f.name == name)
    return field.metadata["help"] + (f"; {role}" if role else "")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_type(annotation: str):
    """The argparse ``type`` of a field from its (string) annotation: int, or str."""
    return int if annotation.startswith("int") else None


def add_run_arguments(p: argparse.ArgumentParser, only: Sequence[str] | None = None,
                      defaults: dict[str, Any] | None = None, run_config: bool = True) -> None:
    """Add one flag per ``RunConfig`` field (``only`` these, when given), help text from the field.

    A flag left out of the command line stays None, meaning "from --config, else the command's default
    (``defaults``), else the field's default", so ``run_config`` can tell given flags from defaults.
    ``run_config``: also add ``--config RUN_YAML`` (a run config, e.g. ``RUN_DIR/config.yaml``).
    """
    defaults = defaults or {}
    if run_config:
        p.add_argument("--config", default=None, metavar="RUN_YAML",
                       help="a run config YAML (e.g. a previous RUN_DIR/config.yaml); flags override it")
    for f in dataclasses.fields(RunConfig):
        if (only is not None and f.name not in only) or not f.metadata.get("flag", True):
            continue
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        if default not in (None, False, [], {}):
            help_text += f" (default: {default})"
        if f.type == "bool":
            p.add_argument(_flag(f.name), action="store_true", default=None, help=help_text)
        elif f.name == "cases":
            p.add_argument(_flag(f.name), default=None, metavar="ID,ID,...", help=help_text)
        else:
            p.add_argument(_flag(f.name), default=None, type=_scalar_type(str(f.type)),
                           choices=f.metadata.get("choices"), help=help_text)
    if only is None or "hparams" in only:
        p.add_argument("--hparam", action="append", default=None, metavar="KEY=VALUE",
                       help="override one of the method's hyper-parameters (value read as YAML; repeatable)")


def run_config(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> RunConfig:
    """The ``RunConfig`` of parsed flags: ``--config`` (else the defaults: the fields' own, updated by the
    command's ``defaults``), then every flag given on the command line."""
    if getattr(args, "config", None):
        cfg = RunConfig.from_yaml(args.config)
    else:
        cfg = RunConfig(**(defaults or {}))
    for f in dataclasses.fields(RunConfig):
        value = getattr(args, f.name, None)
        if value is None or not f.metadata.get("flag", True):
            continue
        if f.name == "cases":
            value = [c.strip() for c in value.split(",") if c.strip()]
        setattr(cfg, f.name, value)
    if getattr(args, "hparam", None):
        cfg.hparams = {**cfg.hparams, **parse_assignments(args.hparam)}
    cfg.validate("command line")
    return cfg



# --- a method ready to run, from a run config --------------------------------------------------------

@dataclasses.dataclass
class PreparedMethod:
    """The editor of a run with its resolved settings and the decoding it implies."""

    editor: object
    hparams: object
    suffix: str | None
    """The suffix system prompt appended to every evaluation input (SafeEdit's protocol)."""
    prompt_format: str
    max_new_tokens: int
    system_prompt: str | None = None
    """Given to the edited side only: the method's own system message (Self-Reminder)."""


def prepare_method(cfg: RunConfig) -> PreparedMethod:
    """The editor of ``cfg.method`` with its hyper-parameters resolved by :func:`method_hparams`; the
    resolved values and the file they came from are written back into ``cfg`` (saved with the run)."""
    from detoxedit.methods.base import get_method

    hparams, path = method_hparams(cfg.method, cfg.model, cfg.method_config, cfg.hparams)
    if hparams is not None:
        cfg.method_config = str(path) if path else None
        cfg.hparams = hparams.to_dict()
    cls = get_method(cfg.method)
    editor = cls(hparams) if hparams is not None else cls()
    return PreparedMethod(
        editor=editor, hparams=hparams,
        suffix=getattr(hparams, "suffix_system_prompt", None),
        prompt_format=cfg.prompt_format or getattr(hparams, "prompt_format", "chat"),
        max_new_tokens=cfg.max_new_tokens or getattr(hparams, "max_output_length", 600),
        system_prompt=getattr(editor, "system_prompt", None))
