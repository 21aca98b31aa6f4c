"""File I/O every part of detoxedit shares: atomic writes, fsync'd JSONL appends, the cache directory.

Rules this module keeps for the whole package:

* A file is either the old one or the complete new one, never half written: every whole-file write
  goes to a temporary file in the same directory, is flushed to disk, and is renamed over the target
  (``os.replace`` is atomic on POSIX and Windows).
* An append-only JSONL file (run records, labels) gets one whole line per ``os.write`` followed by
  ``fsync``; a process killed mid-write leaves at most one torn last line, which :func:`read_jsonl`
  reports so the caller can drop it.
* Caches live under one directory, :func:`cache_dir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


def cache_dir() -> Path:
    """``$DETOXEDIT_CACHE``, else ``$XDG_CACHE_HOME/detoxedit``, else ``~/.cache/detoxedit`` (``~`` expanded)."""
    if os.environ.get("DETOXEDIT_CACHE"):
        return Path(os.environ["DETOXEDIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).expanduser() / "detoxedit"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_path(target) as tmp: write(tmp)``: the target appears only when the block succeeds.

    For writers that want a file name (``safetensors.save_file``, ``torch.save``). The temporary file sits
    beside the target (same file system, so the rename is atomic) and gets the permissions an ordinary
    ``open`` would give (``mkstemp`` makes 0600 files). On error the temporary file is removed and the
    target is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent))
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (flushed and fsync'd before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None, **dumps: Any) -> Path:
    """``json.dumps(obj)`` (plus a final newline) written to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default, **dumps) + "\n")


def jsonl_text(rows: Iterable[dict]) -> str:
    """The JSONL text of ``rows``: one ``json.dumps(row, ensure_ascii=False)`` per line."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Replace a JSONL file atomically (e.g. to drop a torn line, or to rewrite records with new labels)."""
    return atomic_write_text(path, jsonl_text(rows))


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON line to ``path`` with one ``os.write`` and ``fsync``: the line is whole or torn, never mixed."""
    line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict], bool]:
    """The complete JSON lines of ``path`` and whether its unterminated last line was torn.

    Only the last line may be torn (a killed writer); invalid JSON anywhere else raises ``ValueError``
    naming the line, because it means the file was edited by hand or is not ours.
    """
    rows, torn = [], False
    lines = Path(path).read_bytes().split(b"\n")
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if k == len(lines) - 1:
                torn = True
            else:
                raise ValueError(f"{path}: line {k + 1} is not valid JSON (the file was edited by hand?)") from None
    return rows, torn
