"""What SFT, DPO and Ext-Sub share: trainable deltas on the projection matrices, the chat-formatted
training sequences, per-sequence response log-probabilities and the artefact files.

**Why our own LoRA, not PEFT.** A detoxedit method must leave the model exactly as it was and hand
back an ``Edit`` of float32 deltas. PEFT injects wrapper modules into the model in place (and needs
``fan_in_fan_out`` for GPT-2's ``Conv1D``), so every fit would mutate and then restore the module tree.
Here a trainable delta is a *forward hook* on a projection module that adds ``x -> x dW^T`` to its
output (``dW = (alpha / r) B A`` for LoRA, a dense ``D`` for full fine-tuning); the model's modules
and parameters are never touched, the hook is removed on exit, and the merged delta
``(alpha / r) B A`` is exactly the matrix whose addition to the weight reproduces the hooked forward
(``tests/test_trained_methods.py`` checks both). It is ~100 lines and adds no dependency.

**Why our own training loops, not TRL.** TRL would pull datasets/pandas/pyarrow, and it formats and
tokenizes the conversation itself. Our loops reuse the shared sequence builder
(``machinery.prompt_response_ids``, as DINM's batch does: prompt ids from the chat
template + separately tokenised response ids ending with the end-of-turn token, prompts cut from the
left), so training sees exactly the token ids evaluation produces, and the loss reads only response
tokens.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from detoxedit.errors import DetoxEditError
from detoxedit.io import atomic_path, atomic_write_json
from detoxedit.methods.machinery import io_features, prompt_response_ids, right_pad, to_param_layout
from detoxedit.models import arch
from detoxedit.models.generate import pad_id

ADAPTER_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Trainable deltas on projection matrices
# --------------------------------------------------------------------------------------------------
@dataclass
class Target:
    """One projection matrix a delta is trained on."""

    path: str
    """Module path, as in ``model.named_modules()``."""
    layout: str
    """``linear`` (weight ``[out, in]``) or ``conv1d`` (GPT-2's ``Conv1D``, ``[in, out]``), from ``arch``."""
    in_features: int
    out_features: int

    @property
    def param(self) -> str:
        """The weight's name, as in ``model.named_parameters()`` (the key of the ``Edit`` delta)."""
        return f"{self.path}.weight"


def find_targets(model, roles: Sequence[str], layers: list[int] | None) -> list[Target]:
    """The projection matrices of ``roles`` in ``layers`` (arch table), with their layouts and sizes."""
    out = []
    for path in arch.projection_paths(model, tuple(roles), layers):
        layout = arch.projection_layout(model, path)
        d_in, d_out = io_features(arch.get_module(model, path).weight, layout)
        out.append(Target(path, layout, d_in, d_out))
    return out


class DeltaAdapter:
    """Trainable deltas on a set of projection matrices, applied through forward hooks.

    ``rank > 0``: LoRA (Hu et al. 2021), ``dW = (alpha / rank) B A`` with ``A [rank, in]`` drawn like
    PEFT's default (Kaiming-uniform, ``a = sqrt(5)``) and ``B [out, rank] = 0``, so training starts at
    the base model. ``rank == 0``: full fine-tuning of the matrices, a dense ``D`` (``dW = D``) that
    starts at zero. Everything is float32 on the model's device; the model is never modified.
    """

    def __init__(self, targets: list[Target], rank: int, alpha: float, seed: int = 0,
                 device: torch.device | str = "cpu"):
        if rank < 0:
            raise DetoxEditError("lora_rank must be >= 0 (0 = full fine-tuning)")
        self.targets, self.rank, self.alpha = targets, int(rank), float(alpha)
        self.scale = self.alpha / self.rank if self.rank else 1.0
        gen = torch.Generator().manual_seed(seed)
        self.tensors: dict[str, torch.Tensor] = {}
        for t in targets:
            if self.rank:
                a = torch.empty(self.rank, t.in_features)
                bound = 1.0 / math.sqrt(t.in_features)  # kaiming_uniform_(a=sqrt(5)) on [r, in]
                a.uniform_(-bound, bound, generator=gen)
                self.tensors[f"{t.path}.lora_A"] = a.to(device)
                self.tensors[f"{t.path}.lora_B"] = torch.zeros(t.out_features, self.rank, device=device)
            else:
                self.tensors[f"{t.path}.delta"] = torch.zeros(t.out_features, t.in_features, device=device)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.tensors.values())

    def requires_grad_(self, flag: bool = True) -> "DeltaAdapter":
        for v in self.tensors.values():
            v.requires_grad_(flag)
        return self

    def extra_output(self, t: Target, x: torch.Tensor) -> torch.Tensor:
        """What the delta adds to the module's output: ``x dW^T`` (both layouts keep ``dW`` as [out, in])."""
        if self.rank:
            a, b = self.tensors[f"{t.path}.lora_A"], self.tensors[f"{t.path}.lora_B"]
            return (x.to(a.dtype) @ a.T @ b.T) * self.scale
        return x.to(torch.float32) @ self.tensors[f"{t.path}.delta"].T

    @contextlib.contextmanager
    def attached(self, model) -> Iterator["DeltaAdapter"]:
        """Hooks that add each delta's output to its module's output; removed on exit, even on error."""
        handles = []
        try:
            for t in self.targets:
                module = arch.get_module(model, t.path)

                def hook(mod, args, out, t=t):
                    return out + self.extra_output(t, args[0]).to(out.dtype)

                handles.append(module.register_forward_hook(hook))
            yield self
        finally:
            for h in handles:
                h.remove()

    def merged(self, t: Target) -> torch.Tensor:
        """``dW`` of one target as float32 ``[out, in]`` (``(alpha / r) B A`` for LoRA)."""
        with torch.no_grad():
            if self.rank:
                a, b = self.tensors[f"{t.path}.lora_A"], self.tensors[f"{t.path}.lora_B"]
                return (b.float() @ a.float()) * self.scale
            return self.tensors[f"{t.path}.delta"].detach().float().clone()

    def deltas(self) -> dict[str, torch.Tensor]:
        """Parameter deltas keyed by weight name, in each weight's own layout, float32 on CPU."""
        return {t.param: to_param_layout(self.merged(t), t.layout).cpu() for t in self.targets}

    # --- files ---------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"format_version": ADAPTER_FORMAT_VERSION, "rank": self.rank, "alpha": self.alpha,
                "targets": [vars(t) for t in self.targets]}

    def save(self, path: Path) -> None:
        """``PATH.safetensors`` (the trained tensors) and ``PATH.json`` (rank, alpha, targets)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.tensors.items()}
        with atomic_path(path.with_suffix(".safetensors")) as tmp:
            save_file(tensors, str(tmp))
        atomic_write_json(path.with_suffix(".json"), self.describe())

    @classmethod
    def load(cls, path: Path) -> "DeltaAdapter":
        from safetensors.torch import load_file

        path = Path(path)
        st, js = path.with_suffix(".safetensors"), path.with_suffix(".json")
        for f in (st, js):
            if not f.is_file():
                raise DetoxEditError(f"{f}: adapter file missing (was the artefact written completely?)")
        doc = json.loads(js.read_text())
        if doc.get("format_version") != ADAPTER_FORMAT_VERSION:
            raise DetoxEditError(f"{js}: adapter format {doc.get('format_version')!r}, "
                                 f"this detoxedit reads {ADAPTER_FORMAT_VERSION}")
        targets = [Target(**t) for t in doc["targets"]]
        adapter = cls(targets, doc["rank"], doc["alpha"])
        tensors = load_file(str(st))
        missing = sorted(set(adapter.tensors) - set(tensors))
        if missing:
            raise DetoxEditError(f"{st}: missing tensors {missing[:3]}")
        adapter.tensors = {k: tensors[k] for k in adapter.tensors}
        return adapter


# --------------------------------------------------------------------------------------------------
# Training data: chat-formatted (prompt, response) token ids
# --------------------------------------------------------------------------------------------------
@dataclass
class Encoded:
    """One training sequence: prompt ids + response ids; the loss reads positions ``n_prompt..``."""

    ids: list[int]
    n_prompt: int


def encode(tok, prompt: str, response: str, hp) -> Encoded:
    """Prompt (+ suffix system prompt, chat template, cut from the left) then the response ids ending
    with the end-of-turn token: ``machinery.prompt_response_ids``, so training and evaluation agree."""
    ids, n_prompt = prompt_response_ids(tok, prompt, response, hp)
    return Encoded(ids, n_prompt)


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    keep: int
    """Logits are computed for the last ``keep`` positions only (every response position is among them)."""
    positions: torch.Tensor
    """``[B, T']`` index into the kept logits predicting each response token (padded with 0)."""
    targets: torch.Tensor
    """``[B, T']`` response token ids (padded with 0)."""
    target_mask: torch.Tensor
    """``[B, T']`` 1 for a real response token."""


def collate(seqs: Sequence[Encoded], pad: int) -> Batch:
    """Right-padded batch (every real position keeps its position id) with the response positions."""
    ids, mask = right_pad([s.ids for s in seqs], pad)
    width = ids.shape[1]
    first = min(s.n_prompt - 1 for s in seqs)  # earliest position whose logits a target needs
    keep = width - first
    n_resp = max(len(s.ids) - s.n_prompt for s in seqs)
    positions = torch.zeros((len(seqs), n_resp), dtype=torch.long)
    targets = torch.zeros((len(seqs), n_resp), dtype=torch.long)
    tmask = torch.zeros((len(seqs), n_resp))
    for i, s in enumerate(seqs):
        r = len(s.ids) - s.n_prompt
        positions[i, :r] = torch.arange(s.n_prompt - 1, len(s.ids) - 1) - first
        targets[i, :r] = torch.tensor(s.ids[s.n_prompt:])
        tmask[i, :r] = 1
    return Batch(ids, mask, keep, positions, targets, tmask)


def response_logprobs(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed log-probability of its response tokens, ``log pi(y|x)``, and their count.

    Logits are computed only for the positions the response needs (``logits_to_keep``), in float32.
    """
    dev = next(model.parameters()).device
    out = model(input_ids=batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev),
                use_cache=False, logits_to_keep=batch.keep)
    logits = out.logits[:, -batch.keep:].float()
    picked = torch.gather(logits, 1, batch.positions.to(dev)[..., None].expand(-1, -1, logits.shape[-1]))
    logp = F.log_softmax(picked, dim=-1).gather(-1, batch.targets.to(dev)[..., None])[..., 0]
    tmask = batch.target_mask.to(dev)
    return (logp * tmask).sum(-1), tmask.sum(-1)


def batches(n: int, batch_size: int, epochs: int, seed: int, max_steps: int | None = None
            ) -> list[list[int]]:
    """Index lists: every epoch a fresh shuffle (``random.Random(seed + epoch)``), cut into batches."""
    out: list[list[int]] = []
    for epoch in range(epochs):
        order = list(range(n))
        random.Random(seed + epoch).shuffle(order)
        out += [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return out[:max_steps] if max_steps is not None else out


def train(model, adapter: DeltaAdapter, n_items: int, step_loss: Callable[[list[int]], tuple[torch.Tensor, dict]],
          hp, progress: bool = False, desc: str = "train") -> dict:
    """AdamW on the adapter's tensors; ``step_loss(indices)`` computes one batch's loss (with the
    adapter attached by this function). Returns the training log: per-step losses and timings."""
    adapter.requires_grad_(True)
    opt = torch.optim.AdamW(adapter.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    plan = batches(n_items, hp.batch_size, hp.epochs, hp.seed, hp.max_steps)
    bar = plan
    if progress:
        from tqdm import tqdm
        bar = tqdm(plan, desc=desc, unit="step", dynamic_ncols=True)
    steps: list[dict] = []
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()  # no dropout: the deltas are the only thing that changes
    try:
        with adapter.attached(model):
            for step, idx in enumerate(bar):
                opt.zero_grad(set_to_none=True)
                loss, extra = step_loss(idx)
                loss.backward()
                if hp.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(adapter.parameters(), hp.max_grad_norm)
                opt.step()
                steps.append({"step": step, "loss": loss.item(), **extra})
                if progress:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
    finally:
        adapter.requires_grad_(False)
        model.train(was_training)
    seconds = time.perf_counter() - t0
    return {"steps": steps, "n_steps": len(steps), "train_s": seconds,
            "s_per_step": seconds / max(1, len(steps))}


def sft_loss(model, seqs: Sequence[Encoded], pad: int) -> tuple[torch.Tensor, dict]:
    """Mean negative log-likelihood per response token (the SFT objective)."""
    logp, n = response_logprobs(model, collate(seqs, pad))
    return -logp.sum() / n.sum().clamp_min(1), {"tokens": int(n.sum())}


@torch.no_grad()
def mean_nll(model, adapter: DeltaAdapter | None, seqs: Sequence[Encoded], pad: int, batch_size: int = 8) -> float:
    """Mean NLL per response token over ``seqs`` (with ``adapter`` attached, if given)."""
    ctx = adapter.attached(model) if adapter is not None else contextlib.nullcontext()
    total, count = 0.0, 0.0
    with ctx:
        for i in range(0, len(seqs), batch_size):
            logp, n = response_logprobs(model, collate(seqs[i:i + batch_size], pad))
            total -= float(logp.sum())
            count += float(n.sum())
    return total / max(count, 1.0)


def pad_of(tok) -> int:
    return pad_id(tok)


def require_responses(cases, attr: str, method: str) -> None:
    """A clear error naming the cases that lack the response a method trains on."""
    missing = [c.case_id for c in cases if not (getattr(c, attr) or "").strip()]
    if missing:
        what = "safe" if attr == "safe" else "unsafe"
        raise DetoxEditError(f"{method} trains on {what} responses; {len(missing)} training case(s) have none "
                             f"(case ids {missing[:5]}{' ...' if len(missing) > 5 else ''})")


# --------------------------------------------------------------------------------------------------
# The editor shared by SFT, DPO and Ext-Sub
# --------------------------------------------------------------------------------------------------
class TrainedEditor:
    """A method that learns deltas on a train split once and returns the same ``Edit`` for every case.

    Subclasses implement ``fit`` (setting ``self.adapters``, ``self.train_log``) and ``merged_deltas``.
    The artefact directory holds one adapter file pair per entry of ``self.adapters`` and
    ``method.json`` (training log, hparams, the base weights' fingerprint).
    """

    uses_instance = False
    needs_training = True
    name = "trained"
    hparams_class = None

    def __init__(self, hparams=None):
        self.hparams = hparams or self.hparams_class()
        self.hparams.validate()
        self.adapters: dict[str, DeltaAdapter] = {}
        self.train_log: dict = {}
        self.base: dict = {}  # model spec, dtype and the fingerprint of one trained weight

    # --- what subclasses provide ----------------------------------------------------------------
    def merged_deltas(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------------
    def _new_adapter(self, model) -> DeltaAdapter:
        hp = self.hparams
        targets = find_targets(model, hp.target_roles, hp.layers)
        dev = next(model.parameters()).device
        return DeltaAdapter(targets, hp.lora_rank, hp.lora_alpha, seed=hp.seed, device=dev)

    def _remember_base(self, model, adapter: DeltaAdapter) -> None:
        from detoxedit.methods.base import param_fingerprint

        first = adapter.targets[0].param
        w = dict(model.named_parameters())[first]
        self.base = {"model": getattr(model, "detoxedit_spec", None),
                     "dtype": str(w.dtype).replace("torch.", ""),
                     "fingerprints": {first: param_fingerprint(w)}}

    def edit(self, model, tok, case=None):
        """The trained delta as an ``Edit`` (``case`` is ignored: this method uses no instance)."""
        from detoxedit.methods.base import Edit

        if not self.adapters:
            raise DetoxEditError(f"{self.name} must be trained first: `detoxedit train --method {self.name}` "
                                 "or a bench run (which trains into RUN_DIR/artifact), or load an artefact")
        t0 = time.perf_counter()
        deltas = self.merged_deltas()
        meta = {"method": self.name, "uses_instance": False, "layer": None,
                "params": len(deltas), "training": summarize(self.train_log),
                "hparams": self.hparams.to_dict(), "model": self.base.get("model"),
                "dtype": self.base.get("dtype"), "base_fingerprints": self.base.get("fingerprints", {}),
                "timings": {"merge_s": time.perf_counter() - t0}}
        return Edit(method=self.name, deltas=deltas, meta=meta)

    def save_artifact(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for key, adapter in self.adapters.items():
            adapter.save(out_dir / key)
        doc = {"method": self.name, "adapters": list(self.adapters), "hparams": self.hparams.to_dict(),
               "base": self.base, "log": self.train_log}
        atomic_write_json(out_dir / "method.json", doc, default=str)

    def load_artifact(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        path = out_dir / "method.json"
        if not path.is_file():
            raise DetoxEditError(f"{path}: missing; {out_dir} holds no trained {self.name} artefact")
        doc = json.loads(path.read_text())
        if doc.get("method") != self.name:
            raise DetoxEditError(f"{out_dir} holds a {doc.get('method')!r} artefact, not {self.name!r}")
        self.adapters = {key: DeltaAdapter.load(out_dir / key) for key in doc["adapters"]}
        self.base, self.train_log = doc.get("base", {}), doc.get("log", {})


def summarize(log: dict) -> dict:
    """A short training summary for ``Edit.meta`` (the full per-step log stays in the artefact)."""
    out = {}
    for part, entry in log.items():
        if isinstance(entry, dict) and "steps" in entry:
            losses = [s["loss"] for s in entry["steps"]]
            out[part] = {"n_steps": entry["n_steps"], "first_loss": losses[0] if losses else None,
                         "last_loss": losses[-1] if losses else None, "train_s": entry.get("train_s")}
        elif not isinstance(entry, (dict, list)):
            out[part] = entry
    return out
