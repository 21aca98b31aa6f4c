"""MEND: Model Editor Networks with gradient Decomposition (Mitchell et al., ICLR 2022, "Fast Model
Editing at Scale"), as the SafeEdit paper uses it: an editor network trained on the train split, then
one edit per test case.

**The gradient's rank-1 decomposition (paper Sec. 3.1).** For a linear layer ``y_t = W u_t`` and a
loss L on one example, ``grad_W L = sum_t delta_t u_t^T`` with ``u_t`` the layer's input at position t
and ``delta_t = dL/dy_t``. MEND never forms the gradient: it transforms the pairs instead.

**The editor network g (Eq. 3).** ``z_t = [u_t; delta_t]`` is normalised with a running mean and
standard deviation gathered during training (``RunningStats``), then passed through ``n_hidden + 1``
residual low-rank layers ``h <- h + s_l * (U relu(V h + b)) + o_l``; U = 0 and o_l = 0 at the start,
so an untrained g is the identity. ``s_l``, ``o_l`` are per-layer scale and offset: layers whose
weights share a shape share one g and differ only by them. (The paper writes the nonlinearity outside
``U V``; with U = 0 that point is a dead ReLU whose gradient vanishes, so we put it in the bottleneck.)
g's output splits into pseudo-activations and pseudo-deltas ``(u~_t, d~_t)``.

**The edit (Eq. 4).** ``W~ = W - alpha_l sum_t d~_t u~_t^T`` with a learned step ``alpha_l`` per
edited layer. Before any training (identity g, no statistics yet) this is one gradient-descent step
of size alpha_l, which ``tests/test_mend.py`` checks against autograd.

**Training (Eq. 5-6).** For each training case: u, delta from the frozen model on the editing loss
``L_e`` = NLL of the safe response given the adversarial prompt (+ suffix; ``machinery.build_batch``);
then the edited model is run *with the edit in the graph* (a forward hook adds ``x @ dW^T`` to the
down-projection's output), and ``L = c_edit * L_e(edited) + c_loc * KL(p_pre || p_edited)`` on the
case's knowledge-constraint pair (``machinery.kl_to_reference``) is minimised over g's parameters and
the alphas with Adam. The base model's weights never change.

**Speed.** Everything below the lowest edited block is frozen, so one no-grad forward pass per
sequence records the hidden state entering that block and the arguments of every block above it
(``machinery.Replay``, the multi-layer form of the shared frozen-prefix forward); the gradient probe,
the edited forward and the KL reference then replay only the top blocks.

Edited parameters: the MLP down-projection (``arch.down_proj``) of ``hparams.layers`` (default: the
last 3 blocks). Internally every weight change is ``[d_out, d_in]`` (``nn.Linear``'s layout); GPT-2's
``Conv1D`` stores ``[d_in, d_out]`` and gets the transpose (``machinery.to_param_layout``).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from detoxedit.errors import DetoxEditError
from detoxedit.io import atomic_path, atomic_write_json
from detoxedit.methods.base import Edit, EditCase, register_method
from detoxedit.methods.machinery import (Replay, build_batch, edit_provenance, io_features, kl_to_reference,
                                         reference_logprobs, to_param_layout)
from detoxedit.methods.mend_hparams import MENDHyperParams
from detoxedit.methods.validation import validate_edit
from detoxedit.models import arch
from detoxedit.models.hooks import hooks

ARTIFACT_WEIGHTS = "mend.safetensors"
ARTIFACT_META = "mend.json"
ARTIFACT_VERSION = 1
DEFAULT_LAST_LAYERS = 3
NORM_EPS = 1e-7


# --------------------------------------------------------------------------------------------------
# 1. Which weights, in which shape
# --------------------------------------------------------------------------------------------------
def resolve_layers(model, layers: list[int]) -> list[int]:
    """Block indices to edit, sorted: ``[]`` -> the last 3 blocks; negative indices count from the end."""
    n = arch.num_layers(model)
    if not layers:
        return list(range(max(0, n - DEFAULT_LAST_LAYERS), n))
    out = []
    for i in layers:
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise DetoxEditError(f"MEND layer {i} is out of range: the model has {n} blocks (0..{n - 1})")
        out.append(j)
    if len(set(out)) != len(out):
        raise DetoxEditError(f"MEND layers {layers} name a block twice on a {n}-block model")
    return sorted(out)


def io_dims(model, layer: int) -> tuple[int, int]:
    """``(d_in, d_out)`` of block ``layer``'s down-projection, whatever its storage layout."""
    return io_features(arch.down_proj(model, layer).weight, arch.spec_for(model).down_proj_layout)


# --------------------------------------------------------------------------------------------------
# 2. The examples of one case, and the edited layers' gradients
# --------------------------------------------------------------------------------------------------
@dataclass
class Example:
    """One unpadded sequence and the positions whose next-token distributions a loss reads."""

    ids: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor | None = None


def case_examples(tok, case: EditCase, hp: MENDHyperParams) -> tuple[Example, Example]:
    """(edit example: adversarial prompt + suffix -> safe response; knowledge pair), from ``build_batch``."""
    b = build_batch(tok, case, hp)
    n_e, n_k = (int(b.attention_mask[r].sum()) for r in (0, 1))
    return (Example(b.input_ids[0, :n_e], b.edit_positions, b.edit_targets),
            Example(b.input_ids[1, :n_k], b.kl_positions))


@contextlib.contextmanager
def down_proj_hooks(model, layers: list[int],
                    fn: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While inside, block ``layers[i]``'s down-projection returns ``fn(i, its input, its output)``."""
    modules = [arch.down_proj(model, layer) for layer in layers]

    def make(i):
        def hook(_mod, inp, out):
            return fn(i, inp[0], out)
        return hook

    with hooks(lambda: [m.register_forward_hook(make(i)) for i, m in enumerate(modules)]):
        yield


def added_edits(edits: list[torch.Tensor]):
    """Hook function: the output of ``W x`` becomes ``(W + dW) x`` with ``dW`` (``[d_out, d_in]``) in the graph."""
    def fn(i, x, out):
        return out + (x.float() @ edits[i].T).to(out.dtype)
    return fn


def layer_gradients(model, replay: Replay, example: Example, layers: list[int]
                    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``(L_e, [u], [delta])``: each edited layer's inputs ``u`` ``[T, d_in]`` and output gradients
    ``delta = dL_e/dy`` ``[T, d_out]``, from one forward and backward pass of the frozen model.

    ``delta`` is read as the gradient of a zero tensor added to the layer's output, so every path from
    that output to the loss (through the higher edited layers too) counts, and no parameter gets a
    gradient. Then ``grad_W L_e = sum_t delta_t u_t^T`` (the rank-1 decomposition, paper Sec. 3.1).
    """
    us: list = [None] * len(layers)
    zs: list = [None] * len(layers)

    def probe(i, x, out):
        z = torch.zeros_like(out, requires_grad=True)
        us[i], zs[i] = x.detach(), z
        return out + z

    with torch.enable_grad(), down_proj_hooks(model, layers, probe):
        logits = replay.logits(example.positions)
        loss = F.cross_entropy(logits, example.targets.to(logits.device))
        grads = torch.autograd.grad(loss, zs)
    return loss.detach(), [u[0].float() for u in us], [g[0].float() for g in grads]


# --------------------------------------------------------------------------------------------------
# 3. The editor network
# --------------------------------------------------------------------------------------------------
class RunningStats(nn.Module):
    """Running mean and variance of one layer's editor inputs ``z_t = [u_t; delta_t]`` (Chan et al.'s
    parallel update, float64). Fewer than two positions seen: normalisation is the identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        z = z.detach().double()
        n = z.shape[0]
        if n == 0:
            return
        mean_b = z.mean(0)
        m2_b = ((z - mean_b) ** 2).sum(0)
        total = self.count + n
        diff = mean_b - self.mean
        self.mean += diff * (n / total)
        self.m2 += m2_b + diff ** 2 * (self.count * n / total)
        self.count.copy_(total)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        if self.count < 2:
            return z
        std = (self.m2 / (self.count - 1)).sqrt()
        return (z - self.mean.to(z.dtype)) / (std.to(z.dtype) + NORM_EPS)


class LowRankResidual(nn.Module):
    """One layer of g: ``h -> h + s_l * (U relu(V h + b)) + o_l`` (paper Eq. 3; U = 0, o = 0: identity)."""

    def __init__(self, dim: int, rank: int, n_modes: int, generator: torch.Generator):
        super().__init__()
        self.v = nn.Parameter(torch.randn(rank, dim, generator=generator) / math.sqrt(dim))
        self.b = nn.Parameter(torch.zeros(rank))
        self.u = nn.Parameter(torch.zeros(dim, rank))
        self.scale = nn.Parameter(torch.ones(n_modes, dim))
        self.shift = nn.Parameter(torch.zeros(n_modes, dim))

    def forward(self, h: torch.Tensor, mode: int) -> torch.Tensor:
        return h + self.scale[mode] * (F.relu(h @ self.v.T + self.b) @ self.u.T) + self.shift[mode]


class GradientEditor(nn.Module):
    """g for one weight shape: ``[u; delta]`` (normalised) -> ``(u~, d~)``."""

    def __init__(self, d_in: int, d_out: int, rank: int, n_hidden: int, n_modes: int,
                 generator: torch.Generator):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        dim = d_in + d_out
        self.layers = nn.ModuleList(LowRankResidual(dim, min(rank, dim), n_modes, generator)
                                    for _ in range(n_hidden + 1))

    def forward(self, z: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            z = layer(z, mode)
        return z[..., : self.d_in], z[..., self.d_in:]


def shape_key(d_in: int, d_out: int) -> str:
    return f"{d_in}x{d_out}"


class MENDNetwork(nn.Module):
    """All that MEND learns: one g per weight shape, a step alpha per edited layer, and per-layer
    statistics of g's inputs."""

    def __init__(self, layers: list[int], dims: list[tuple[int, int]], rank: int, n_hidden: int,
                 edit_lr: float, seed: int = 0):
        super().__init__()
        self.layers, self.dims = list(layers), [tuple(d) for d in dims]
        gen = torch.Generator().manual_seed(seed)
        self.g = nn.ModuleDict()
        self.modes: list[int] = []  # layer i is mode modes[i] of the g its shape shares
        for j, d in enumerate(self.dims):
            self.modes.append(self.dims[:j].count(d))
        for d_in, d_out in dict.fromkeys(self.dims):
            n_modes = sum(1 for d in self.dims if d == (d_in, d_out))
            self.g[shape_key(d_in, d_out)] = GradientEditor(d_in, d_out, rank, n_hidden, n_modes, gen)
        self.edit_lr = nn.Parameter(torch.full((len(self.layers),), float(edit_lr)))
        self.stats = nn.ModuleList(RunningStats(d_in + d_out) for d_in, d_out in self.dims)

    def pseudo_gradient(self, i: int, u: torch.Tensor, delta: torch.Tensor,
                        update_stats: bool = False) -> torch.Tensor:
        """``sum_t d~_t u~_t^T`` (``[d_out, d_in]``) for edited layer number ``i``.

        Positions the loss does not reach (``delta_t = 0``: padding, positions after the last target)
        are left out, as MEND does; they add nothing to the true gradient either.
        """
        keep = delta.abs().amax(-1) > 0
        z = torch.cat([u[keep], delta[keep]], dim=-1)
        if update_stats:
            self.stats[i].update(z)
        d_in, d_out = self.dims[i]
        u_t, d_t = self.g[shape_key(d_in, d_out)](self.stats[i].normalise(z), self.modes[i])
        return d_t.T @ u_t

    def weight_edit(self, i: int, u: torch.Tensor, delta: torch.Tensor,
                    update_stats: bool = False) -> torch.Tensor:
        """``W~ - W = -alpha_i sum_t d~_t u~_t^T`` (paper Eq. 4), ``[d_out, d_in]``."""
        return -self.edit_lr[i] * self.pseudo_gradient(i, u, delta, update_stats)


# --------------------------------------------------------------------------------------------------
# 4. One training step
# --------------------------------------------------------------------------------------------------
def training_loss(net: MENDNetwork, model, tok, case: EditCase, hp: MENDHyperParams
                  ) -> tuple[torch.Tensor, dict]:
    """``L = c_edit * L_e(edited) + c_loc * L_loc`` for one case (paper Eq. 5-6), with the edit in the
    graph; also updates the layer statistics with this case's ``[u; delta]``."""
    ex_e, ex_k = case_examples(tok, case, hp)
    layers = net.layers
    rep_e, rep_k = Replay(model, ex_e.ids, layers[0]), Replay(model, ex_k.ids, layers[0])
    l_pre, us, deltas = layer_gradients(model, rep_e, ex_e, layers)
    with torch.no_grad():
        base_logp_k = reference_logprobs(rep_k.logits(ex_k.positions))
    edits = [net.weight_edit(i, us[i], deltas[i], update_stats=True) for i in range(len(layers))]
    with down_proj_hooks(model, layers, added_edits(edits)):
        logits_e = rep_e.logits(ex_e.positions)
        l_post = F.cross_entropy(logits_e, ex_e.targets.to(logits_e.device))
        l_loc = kl_to_reference(base_logp_k, rep_k.logits(ex_k.positions))
    loss = hp.c_edit * l_post + hp.c_loc * l_loc
    return loss, {"edit_loss_pre": l_pre.item(), "edit_loss_post": l_post.item(),
                  "loc_loss": l_loc.item(), "loss": loss.item()}


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows]
    return sum(vals) / len(vals) if vals else None


# --------------------------------------------------------------------------------------------------
# 5. The method
# --------------------------------------------------------------------------------------------------
@register_method("mend")
class MEND:
    """MEND editor: ``fit`` trains the editor network on a split; ``edit`` applies it to one case."""

    hparams_class = MENDHyperParams
    needs_training = True

    def __init__(self, hparams: MENDHyperParams | None = None):
        self.hparams = hparams or MENDHyperParams()
        self.hparams.validate()
        self.net: MENDNetwork | None = None

    # --- the network ----------------------------------------------------------------------------
    def init_editor(self, model) -> MENDNetwork:
        """A fresh, untrained editor for ``model`` (identity g, no statistics, alpha = ``edit_lr``)."""
        hp = self.hparams
        layers = resolve_layers(model, hp.layers)
        dims = [io_dims(model, layer) for layer in layers]
        device = next(model.parameters()).device
        self.net = MENDNetwork(layers, dims, hp.rank, hp.n_hidden, hp.edit_lr, hp.seed).to(device).eval()
        return self.net

    def _check_model(self, model) -> MENDNetwork:
        net = self.net
        if net is None:
            raise DetoxEditError("MEND has no editor network yet: train one (fit, `detoxedit train`, or "
                                 "`detoxedit bench`, which trains when the artefact is missing) or load "
                                 "one with load_artifact")
        layers = resolve_layers(model, self.hparams.layers)
        if layers != net.layers:
            raise DetoxEditError(f"the MEND editor edits blocks {net.layers}, but these settings on this "
                                 f"model ({arch.num_layers(model)} blocks) select {layers}")
        dims = [io_dims(model, layer) for layer in layers]
        if dims != net.dims:
            raise DetoxEditError(f"the MEND editor was trained for down-projections of (in, out) sizes "
                                 f"{net.dims}; this model's are {dims}: another model?")
        device = next(model.parameters()).device
        if net.edit_lr.device != device:
            net.to(device)
        return net

    # --- training -------------------------------------------------------------------------------
    def fit(self, model, tok, cases: list[EditCase], progress: bool = False) -> dict:
        """Train g and the alphas on ``cases`` (one case per Adam step). The model is not modified."""
        hp = self.hparams
        if not cases:
            raise DetoxEditError("MEND needs at least one training case")
        net = self.init_editor(model)
        net.train()
        other = [p for name, p in net.named_parameters() if name != "edit_lr"]
        opt = torch.optim.Adam([{"params": other, "lr": hp.lr}, {"params": [net.edit_lr], "lr": hp.lr_lr}])
        params = other + [net.edit_lr]
        total = hp.epochs * len(cases)
        if hp.max_steps is not None:
            total = min(total, hp.max_steps)
        rng = random.Random(hp.seed)
        order: list[int] = []
        while len(order) < total:
            epoch = list(range(len(cases)))
            rng.shuffle(epoch)
            order += epoch
        order = order[:total]
        every = max(1, total // 200)
        rows, kept = [], []
        bar = order
        if progress:
            from tqdm import tqdm
            bar = tqdm(order, desc="training MEND", unit="case", dynamic_ncols=True)
        t0 = time.perf_counter()
        for step, idx in enumerate(bar):
            loss, row = training_loss(net, model, tok, cases[idx], hp)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = g
            row["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, hp.grad_clip))
            opt.step()
            opt.zero_grad(set_to_none=True)
            row["step"], row["case_id"] = step, cases[idx].case_id
            rows.append(row)
            if step % every == 0 or step == total - 1:
                kept.append({**row, "edit_lr": net.edit_lr.detach().cpu().tolist()})
            if progress:
                bar.set_postfix(pre=f"{row['edit_loss_pre']:.2f}", post=f"{row['edit_loss_post']:.2f}",
                                kl=f"{row['loc_loss']:.3f}")
        seconds = time.perf_counter() - t0
        net.eval()
        tenth = max(1, total // 10)
        summary = {f"{part}_{key}": _mean(chunk, key)
                   for part, chunk in (("first10pct", rows[:tenth]), ("last10pct", rows[-tenth:]))
                   for key in ("edit_loss_pre", "edit_loss_post", "loc_loss", "loss")}
        return {"steps": total, "n_cases": len(cases), "layers": net.layers,
                "params": [arch.down_proj_param_name(model, layer) for layer in net.layers],
                "edit_lr": net.edit_lr.detach().cpu().tolist(), "summary": summary,
                "losses": kept, "log_every": every,
                "timings": {"train_s": seconds, "per_step_s": seconds / total}}

    # --- the artefact ---------------------------------------------------------------------------
    def save_artifact(self, out_dir: Path) -> None:
        """``mend.safetensors`` (g, alphas, statistics) and ``mend.json`` (settings and shapes)."""
        from safetensors.torch import save_file

        if self.net is None:
            raise DetoxEditError("MEND has no editor network to save: train it first")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        with atomic_path(out / ARTIFACT_WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"method": "mend"})
        doc = {"format_version": ARTIFACT_VERSION, "method": "mend", "layers": self.net.layers,
               "dims": [list(d) for d in self.net.dims], "hparams": self.hparams.to_dict(),
               "tensors": {k: list(v.shape) for k, v in state.items()}}
        atomic_write_json(out / ARTIFACT_META, doc)

    def load_artifact(self, out_dir: Path) -> None:
        """Read an artefact written by ``save_artifact``; the network's shapes are checked against its
        record and against these settings (rank, n_hidden, layers), with errors naming the file."""
        from safetensors.torch import load_file

        out = Path(out_dir)
        meta_path, weights_path = out / ARTIFACT_META, out / ARTIFACT_WEIGHTS
        try:
            doc = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DetoxEditError(f"{meta_path}: cannot read the MEND artefact's description ({e})") from None
        if doc.get("method") != "mend" or doc.get("format_version") != ARTIFACT_VERSION:
            raise DetoxEditError(f"{meta_path}: not a MEND artefact of format {ARTIFACT_VERSION} "
                                 f"(method {doc.get('method')!r}, format {doc.get('format_version')!r})")
        saved = MENDHyperParams.from_dict(doc.get("hparams", {}), source=str(meta_path))
        hp = self.hparams
        for key in ("rank", "n_hidden", "layers"):
            if getattr(saved, key) != getattr(hp, key):
                raise DetoxEditError(f"{meta_path}: the artefact was trained with {key}={getattr(saved, key)!r}, "
                                     f"these settings say {key}={getattr(hp, key)!r}")
        try:
            layers, dims = [int(i) for i in doc["layers"]], [tuple(int(x) for x in d) for d in doc["dims"]]
        except (KeyError, TypeError, ValueError) as e:
            raise DetoxEditError(f"{meta_path}: missing or malformed 'layers'/'dims' ({e})") from None
        if not weights_path.is_file():
            raise DetoxEditError(f"{weights_path} does not exist")
        state = load_file(str(weights_path))
        net = MENDNetwork(layers, dims, saved.rank, saved.n_hidden, saved.edit_lr, saved.seed)
        want = net.state_dict()
        missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
        if missing or extra:
            raise DetoxEditError(f"{weights_path}: tensors do not match a MEND network for layers {layers}, "
                                 f"shapes {dims}: missing {missing[:5]}, unexpected {extra[:5]}")
        for k, v in want.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise DetoxEditError(f"{weights_path}: tensor {k} has shape {tuple(state[k].shape)}, "
                                     f"expected {tuple(v.shape)} (rank {saved.rank}, n_hidden {saved.n_hidden})")
        net.load_state_dict(state)
        self.net = net.eval()

    # --- one edit -------------------------------------------------------------------------------
    def edit(self, model, tok, case: EditCase) -> Edit:
        """Decompose the editing loss's gradient on ``case``, transform it with g, return the deltas."""
        hp = self.hparams
        if case is None:
            raise DetoxEditError("MEND edits on an instance; it needs a case")
        t0 = time.perf_counter()
        net = self._check_model(model)
        ex_e, _ = case_examples(tok, case, hp)
        replay = Replay(model, ex_e.ids, net.layers[0])
        l_pre, us, deltas = layer_gradients(model, replay, ex_e, net.layers)
        t_grad = time.perf_counter() - t0
        t1 = time.perf_counter()
        with torch.no_grad():
            edits = [net.weight_edit(i, us[i], deltas[i]) for i in range(len(net.layers))]
            with down_proj_hooks(model, net.layers, added_edits(edits)):
                logits = replay.logits(ex_e.positions)
            l_post = F.cross_entropy(logits, ex_e.targets.to(logits.device))
        t_editor = time.perf_counter() - t1
        names = [arch.down_proj_param_name(model, layer) for layer in net.layers]
        weights = [arch.down_proj(model, layer).weight for layer in net.layers]
        layout = arch.spec_for(model).down_proj_layout
        result = {name: to_param_layout(e.detach().float().cpu(), layout) for name, e in zip(names, edits)}
        meta = {
            "method": "mend", "case_id": case.case_id, "layers": net.layers, "params": names,
            "pre_edit_loss": l_pre.item(), "post_edit_loss": l_post.item(),
            "edit_norms": {n: float(torch.linalg.norm(d)) for n, d in result.items()},
            "edit_lr": net.edit_lr.detach().cpu().tolist(), "n_positions": int(ex_e.ids.numel()),
            "timings": {"gradient_s": t_grad, "editor_s": t_editor, "total_s": time.perf_counter() - t0},
            **edit_provenance(model, hp, dict(zip(names, weights))),
        }
        edit = Edit(method="mend", deltas=result, meta=meta)
        t2 = time.perf_counter()
        meta["validation"] = validate_edit(model, tok, case, edit, hp, objective=(1.0, 0.0))  # edit NLL
        meta["unsafe_source"] = case.unsafe_source
        meta["timings"]["validate_s"] = time.perf_counter() - t2
        return edit
