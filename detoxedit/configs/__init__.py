"""Built-in hyper-parameter files, one YAML per method x model family (``configs/`` in the repo).

Each file opens with the command that runs it. They ship inside the package so that
``--model default`` works from an installed wheel too.
"""

from __future__ import annotations

from pathlib import Path

from detoxedit.errors import DetoxEditError

CONFIG_ROOT = Path(__file__).resolve().parent


def builtin_config_path(method: str, name: str) -> Path:
    path = CONFIG_ROOT / method / f"{name}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in (CONFIG_ROOT / method).glob("*.yaml"))
        raise DetoxEditError(f"no built-in {method} config {name!r}; available: {', '.join(have) or 'none'}")
    return path


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping; clear errors naming the file otherwise."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise DetoxEditError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise DetoxEditError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise DetoxEditError(f"{path}: expected a mapping of settings at the top level")
    return raw
