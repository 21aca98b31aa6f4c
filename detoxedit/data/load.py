"""Where a split comes from: a file, a directory, the built-in benchmark or the hub.

:func:`load_split` takes what the user passes as ``--data``: a SafeEdit file, a directory holding
``SafeEdit_{split}.json``, the word ``builtin`` (:func:`load_builtin_split`: the shipped prebuilt copy,
else one built earlier on this machine, else built now) or a hub dataset id such as
``zjunlp/SafeEdit`` (downloaded once, then read from the Hugging Face cache; offline misses get a
message saying what to do instead).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from detoxedit.data.build import build, gather_inputs, test_all_records
from detoxedit.data.builtin import builtin_fingerprint, prebuilt_split
from detoxedit.data.jsonio import read_records
from detoxedit.data.records import SafeEditRecord, canonical_split
from detoxedit.data.unsafe import model_generator
from detoxedit.errors import DataError
from detoxedit.io import cache_dir

log = logging.getLogger(__name__)


def split_file_candidates(directory: Path, split: str) -> list[Path]:
    """The file names we look for in a directory, official first."""
    names = [f"SafeEdit_{split}.json", f"SafeEdit_{split}.jsonl", f"{split}.json", f"{split}.jsonl"]
    return [directory / n for n in names]


def split_source(data: str | os.PathLike, split: str) -> str:
    """The name of the file a split is read from, for messages: the file itself, the split's file in a
    directory, or ``data`` as given (``builtin``, a hub id)."""
    p = Path(str(data)).expanduser()
    if p.is_dir():
        for cand in split_file_candidates(p, canonical_split(split)):
            if cand.is_file():
                return str(cand)
    return str(data)


def _looks_like_hub_id(data: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", data)) and not Path(data).exists()


def load_split(data: str | os.PathLike, split: str = "test") -> list[SafeEditRecord]:
    """The records of one split from wherever the user keeps the data.

    ``data`` is a file (read as is; ``split`` is then only a label), a directory holding
    ``SafeEdit_{split}.json``, the word ``builtin`` (our shipped benchmark, see
    :func:`load_builtin_split`), or a hub dataset id such as ``zjunlp/SafeEdit`` (downloaded with
    ``huggingface_hub`` when online, read from its cache when offline).
    """
    split = canonical_split(split)
    text = str(data)
    if text == "builtin":
        return load_builtin_split(split)
    p = Path(text).expanduser()
    if p.is_file():
        return read_records(p)
    if p.is_dir():
        for cand in split_file_candidates(p, split):
            if cand.is_file():
                return read_records(cand)
        raise DataError(f"no {split} split here; looked for "
                        + ", ".join(c.name for c in split_file_candidates(p, split)), file=str(p))
    if _looks_like_hub_id(text):
        return read_records(hub_split_path(text, split))
    raise DataError("no such file or directory (and not a hub id like zjunlp/SafeEdit, nor 'builtin')",
                    file=text)


def hub_split_path(repo_id: str, split: str) -> Path:
    """Local path of ``SafeEdit_{split}.json`` from a hub dataset repo, downloading when online.

    Offline (``HF_HUB_OFFLINE=1`` or no network) only the local cache is used; a miss raises a
    :class:`DataError` that says exactly what to do instead.
    """
    split = canonical_split(split)
    filename = f"SafeEdit_{split}.json"
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise DataError("reading from the hub needs huggingface_hub: pip install huggingface_hub",
                        file=f"{repo_id}/{filename}") from None
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset"))
    except Exception as err:  # the hub raises many types; classify by name to stay version-proof
        if type(err).__name__ == "EntryNotFoundError":  # online, but the file lives elsewhere
            found = _find_in_repo(repo_id, split)
            if found is not None:
                return Path(hf_hub_download(repo_id=repo_id, filename=found, repo_type="dataset"))
        raise DataError(_hub_error_message(repo_id, split, err), file=f"{repo_id}/{filename}") from None


def _find_in_repo(repo_id: str, split: str) -> str | None:
    """A file named ``SafeEdit_{split}.json(l)`` anywhere in the dataset repo (None if none)."""
    try:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(repo_id, repo_type="dataset")
    except Exception:
        return None
    wanted = {f"safeedit_{split}.json".lower(), f"safeedit_{split}.jsonl".lower()}
    return next((f for f in sorted(files) if f.rsplit("/", 1)[-1].lower() in wanted), None)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_error_message(repo_id: str, split: str, err: Exception) -> str:
    name = type(err).__name__
    what_else = (f"download SafeEdit_{split}.json yourself and pass --data DIR (the folder holding it), "
                 f"or use the offline built-in benchmark with --data builtin")
    if "Gated" in name or "401" in str(err) or "403" in str(err):
        return (f"{repo_id} is gated: accept its terms (CC BY-NC-SA 4.0) at "
                f"https://huggingface.co/datasets/{repo_id}, then log in with `hf auth login` "
                f"(or set HF_TOKEN) and retry; or {what_else}")
    if "RepositoryNotFound" in name:
        return f"no dataset {repo_id} on the hub (or it is private and you are not logged in); {what_else}"
    if "EntryNotFound" in name and "Local" not in name:
        return f"{repo_id} has no file SafeEdit_{split}.json; {what_else}"
    if _hub_offline() or "LocalEntryNotFound" in name or "Offline" in name or "Connect" in name:
        reason = ("HF_HUB_OFFLINE=1 is set" if _hub_offline() else "the hub cannot be reached")
        return (f"cannot load split {split} of {repo_id}: {reason} and the file is not in the local "
                f"Hugging Face cache. Run once online (unset HF_HUB_OFFLINE; log in with `hf auth login` "
                f"after accepting the dataset terms) to cache it, or {what_else}")
    return f"could not fetch SafeEdit_{split}.json from {repo_id} ({name}: {err}); {what_else}"


def load_builtin_split(split: str) -> list[SafeEditRecord]:
    """The built-in benchmark's records for ``split`` (train/val/test/test_ALL).

    Order of preference: a prebuilt copy shipped in the package (``builtin/prebuilt/``), then a copy
    built earlier on this machine (in the cache, keyed by the built-in parts' fingerprint), else the
    split is built now with the default generator (minutes on a CPU; cached for next time).
    ``test_ALL`` is derived from the test split (:func:`test_all_records`), so the test split's
    fingerprint guard covers it too.
    """
    split = canonical_split(split)
    if split == "test_ALL":
        return test_all_records(load_builtin_split("test"))
    records = prebuilt_split(split)
    if records is not None:
        return records
    built = cache_dir() / "builtin" / builtin_fingerprint() / split
    target = built / f"SafeEdit_{split}.json"
    if not target.is_file():
        log.info("building the built-in %s split into %s (generating unsafe responses once)", split, built)
        build(gather_inputs(), built, generator=model_generator(), splits=[split], progress=True)
    return read_records(target)
