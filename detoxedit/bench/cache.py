"""On-disk cache of vanilla responses, shared by every run and method.

A vanilla response depends only on the model, the decoding settings and the exact input text, so it
is computed once and reused by later runs and by other methods. Each entry is one small JSON file
written atomically, which keeps the cache safe for several shard processes at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from detoxedit.methods.base import param_fingerprint
from detoxedit.models import arch
from detoxedit.models.generate import GenerationSettings


def model_key(model, spec: str, dtype: str) -> str:
    """Identifies the weights: spec, dtype, config, and fingerprints of two of its tensors."""
    parts = {
        "spec": spec, "dtype": dtype, "config": model.config.to_json_string(use_diff=False),
        "final_norm": param_fingerprint(next(arch.final_norm(model).parameters())),
        "down0": param_fingerprint(arch.down_proj(model, 0).weight),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


class ResponseCache:
    def __init__(self, root: Path, model_id: str):
        self.dir = Path(root) / "responses" / model_id

    def _path(self, settings: GenerationSettings, prompt: str) -> Path:
        key = hashlib.sha256(json.dumps([settings.to_dict(), prompt], sort_keys=True).encode()).hexdigest()
        return self.dir / key[:2] / f"{key}.json"

    def get(self, settings: GenerationSettings, prompt: str) -> str | None:
        path = self._path(settings, prompt)
        try:
            return json.loads(path.read_text())["response"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None

    def generate(self, model, tok, prompts: list[str], settings: GenerationSettings) -> tuple[list[str], int]:
        """Responses to ``prompts`` (cached ones read, the rest generated in one call and stored), and how
        many came from the cache."""
        from detoxedit.models.generate import generate

        found = [self.get(settings, p) for p in prompts]
        missing = list(dict.fromkeys(p for p, r in zip(prompts, found) if r is None))
        fresh = dict(zip(missing, generate(model, tok, missing, settings))) if missing else {}
        for p in missing:
            self.put(settings, p, fresh[p])
        return [r if r is not None else fresh[p] for p, r in zip(prompts, found)], sum(r is not None for r in found)

    def put(self, settings: GenerationSettings, prompt: str, response: str) -> None:
        path = self._path(settings, prompt)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"prompt": prompt, "settings": settings.to_dict(), "response": response}, f)
        os.replace(tmp, path)
