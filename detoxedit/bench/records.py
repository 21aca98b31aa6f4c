"""Per-case result records of a run: one JSON line per case, never lost, never repeated.

Each shard process appends to its own file (``records.jsonl`` or ``records.shard-I-of-N.jsonl``), one
whole line per ``os.write`` followed by ``fsync`` (``detoxedit.io.append_jsonl``). If a process is killed
mid-write, the torn last line is dropped when the file is next opened, so a rerun redoes exactly that
case and no other.
"""

from __future__ import annotations

from pathlib import Path

from detoxedit.io import append_jsonl, atomic_write_jsonl, read_jsonl


def records_path(run_dir: Path, shard: tuple[int, int]) -> Path:
    i, n = shard
    return run_dir / ("records.jsonl" if n == 1 else f"records.shard-{i}-of-{n}.jsonl")


def read_run_records(run_dir: Path, pattern: str = "records*.jsonl") -> list[dict]:
    """All complete records of a run, over every shard file, in file order (first copy of an id wins)."""
    seen, out = set(), []
    for path in sorted(Path(run_dir).glob(pattern)):
        for rec in read_jsonl(path)[0]:
            if rec["case_id"] not in seen:
                seen.add(rec["case_id"])
                out.append(rec)
    return out


class RecordWriter:
    """Appends records to one shard file; repairs a torn last line on open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            records, torn = read_jsonl(self.path)
            if torn:
                atomic_write_jsonl(self.path, records)

    def append(self, record: dict) -> None:
        append_jsonl(self.path, record)
