"""Per-case result records of a run: one JSON line per case, never lost, never repeated.

Each shard process appends to its own file (``records.jsonl`` or ``records.shard-I-of-N.jsonl``), one
whole line per ``os.write`` followed by ``fsync``. If a process is killed mid-write, the torn last
line is dropped when the file is next opened, so a rerun redoes exactly that case and no other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def records_path(run_dir: Path, shard: tuple[int, int]) -> Path:
    i, n = shard
    return run_dir / ("records.jsonl" if n == 1 else f"records.shard-{i}-of-{n}.jsonl")


def _read_lines(path: Path) -> tuple[list[dict], bool]:
    """Complete records in ``path`` and whether a torn (incomplete) last line was found."""
    records, torn = [], False
    data = path.read_bytes()
    lines = data.split(b"\n")
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if k == len(lines) - 1:  # only the unterminated last line may be torn
                torn = True
            else:
                raise ValueError(f"{path}: line {k + 1} is not valid JSON (the file was edited by hand?)")
    return records, torn


def read_records(run_dir: Path, pattern: str = "records*.jsonl") -> list[dict]:
    """All complete records of a run, over every shard file, in file order (first copy of an id wins)."""
    seen, out = set(), []
    for path in sorted(Path(run_dir).glob(pattern)):
        for rec in _read_lines(path)[0]:
            if rec["case_id"] not in seen:
                seen.add(rec["case_id"])
                out.append(rec)
    return out


def rewrite_records(path: Path, records: list[dict]) -> None:
    """Replace a records file atomically (used to drop a torn line, or to add a judge's labels)."""
    tmp = Path(path).with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    os.replace(tmp, path)


class RecordWriter:
    """Appends records to one shard file; repairs a torn last line on open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            records, torn = _read_lines(self.path)
            if torn:
                self._rewrite(records)

    def _rewrite(self, records: list[dict]) -> None:
        rewrite_records(self.path, records)

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
