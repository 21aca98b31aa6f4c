"""The one on-disk cache of generated responses, shared by runs, methods, ``general`` and the data builder.

A greedy response depends only on the weights, the decoding settings and the exact input text, so it is
computed once and reused by later runs and by other methods. Entries are grouped by a *namespace* that
identifies the generator (for a loaded model, :func:`model_key`; for the data builder's generator, a hash
of its description) and keyed by the settings and the prompt. Each entry is one small JSON file written
atomically, which keeps the cache safe for several shard processes at once.

:meth:`ResponseCache.prefetch` fills the cache for many prompts at once (the runner's vanilla phase with
``--batch-cases``): the missing prompts go through one ``generate`` call, which sorts them by token length
so each batch holds prompts of similar length, and every batch is stored as soon as it is decoded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from detoxedit.io import atomic_write_json


def model_key(model, spec: str, dtype: str) -> str:
    """Identifies a loaded model's weights: spec, dtype, config, and fingerprints of two of its tensors."""
    from detoxedit.methods.base import param_fingerprint
    from detoxedit.models import arch

    parts = {
        "spec": spec, "dtype": dtype, "config": model.config.to_json_string(use_diff=False),
        "final_norm": param_fingerprint(next(arch.final_norm(model).parameters())),
        "down0": param_fingerprint(arch.down_proj(model, 0).weight),
    }
    return _sha(parts)[:20]


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _settings_dict(settings: Any) -> dict:
    return settings.to_dict() if hasattr(settings, "to_dict") else dict(settings)


class ResponseCache:
    """Responses under ``ROOT/responses/NAMESPACE``, one JSON file per (settings, prompt)."""

    def __init__(self, root: Path, namespace: str):
        self.dir = Path(root) / "responses" / namespace

    def _path(self, settings: Any, prompt: str) -> Path:
        key = _sha([_settings_dict(settings), prompt])
        return self.dir / key[:2] / f"{key}.json"

    def get(self, settings: Any, prompt: str) -> str | None:
        try:
            return json.loads(self._path(settings, prompt).read_text())["response"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None

    def put(self, settings: Any, prompt: str, response: str) -> None:
        atomic_write_json(self._path(settings, prompt),
                          {"prompt": prompt, "settings": _settings_dict(settings), "response": response},
                          indent=None)

    def complete(self, prompts: Sequence[str], settings: Any,
                 generate: Callable[[list[str]], list[str]]) -> tuple[list[str], int]:
        """Responses to ``prompts``: cached ones read, the rest (deduplicated) produced by one
        ``generate(missing_prompts)`` call and stored. Returns them and how many came from the cache."""
        found = [self.get(settings, p) for p in prompts]
        missing = list(dict.fromkeys(p for p, r in zip(prompts, found) if r is None))
        fresh: dict[str, str] = {}
        if missing:
            outs = generate(missing)
            if len(outs) != len(missing):
                raise ValueError(f"generator returned {len(outs)} responses for {len(missing)} prompts")
            fresh = dict(zip(missing, outs))
            for p in missing:
                self.put(settings, p, fresh[p])
        return [r if r is not None else fresh[p] for p, r in zip(prompts, found)], sum(r is not None for r in found)

    def generate(self, model, tok, prompts: Sequence[str], settings) -> tuple[list[str], int]:
        """:meth:`complete` with ``detoxedit.models.generate.generate`` on a loaded model."""
        from detoxedit.models.generate import generate

        return self.complete(prompts, settings, lambda missing: generate(model, tok, missing, settings))

    def prefetch(self, model, tok, prompts: Sequence[str], settings, progress: bool = False) -> list[str]:
        """Generate and store the responses to those of ``prompts`` not cached yet (each once), in
        length-sorted batches of ``settings.batch_size``, each batch stored as soon as it is decoded (a
        killed run keeps what it finished). Returns the prompts it generated, in first-seen order."""
        from detoxedit.models.generate import generate

        missing = list(dict.fromkeys(p for p in prompts if self.get(settings, p) is None))
        if missing:
            def store(positions: list[int], responses: list[str]) -> None:
                for i, r in zip(positions, responses):
                    self.put(settings, missing[i], r)

            generate(model, tok, missing, settings, progress=progress, on_batch=store)
        return missing
