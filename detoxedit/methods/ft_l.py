"""FT-L: constrained fine-tuning of one MLP layer on one instance (the SafeEdit paper's FT-L baseline).

FT-L comes from ROME (Meng et al., "Locating and Editing Factual Associations in GPT", NeurIPS 2022,
Sec. 3: "FT-L", fine-tuning one layer under an L-infinity norm constraint, after Zhu et al. 2020); the
SafeEdit paper (Wang et al., ACL 2024, Table 1) applies it to one adversarial instance per edit:

    min_W  L(W) = -(1/|Y_safe|) sum_t log p_W(y_t | X + s, y_<t)
    s.t.   |W_ij - W0_ij| <= eps  for every entry (projected after every Adam step)

with W the down-projection of one block, X the adversarial input, s the suffix system prompt and
Y_safe the safe response; the batch is DINM's (``machinery.build_batch``), so inputs are formatted
identically.
Unlike DINM there is no KL term and no toxic-layer localisation.

The layer is either configured (``layers: [N]``) or chosen per case by **causal tracing** (Meng et
al. 2022, Sec. 2.1): corrupt the prompt's input embeddings with Gaussian noise of std
``trace_noise * sigma`` (sigma: std of the clean prompt embeddings), then, for each layer l, rerun
the corrupted input with block l's clean MLP output restored at every prompt position. The indirect
effect of layer l is

    IE_l = log p_restored_l(R | prompt) - log p_corrupted(R | prompt)

where R is the model's own greedy (unsafe) response to the prompt; the layer with the largest IE is
edited. All effects are recorded in the edit's meta.

The model is never modified: the tuned matrix is a float32 copy injected into the forward pass (the
shared frozen-prefix forward, ``machinery.FastForward``, which replays only the blocks above the edited
layer), and the result is an ``Edit``.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from detoxedit.errors import DetoxEditError
from detoxedit.methods.base import Edit, EditCase, register_method
from detoxedit.methods.validation import validate_edit
from detoxedit.methods.ft_l_hparams import FTLHyperParams
from detoxedit.methods.machinery import (FastForward, OutputHead, Projector, block_input, build_batch,
                                         edit_provenance, own_response, replay_blocks)
from detoxedit.models import arch
from detoxedit.models.generate import truncate_left, with_suffix
from detoxedit.models.hooks import capture_calls, capture_outputs, hooks


# --------------------------------------------------------------------------------------------------
# 1. Choosing the layer by causal tracing
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def causal_trace(model, p_ids: list[int], r_ids: list[int], noise: float = 3.0, samples: int = 5,
                 seed: int = 0) -> dict:
    """Indirect effect of each layer's MLP output on ``log p(r_ids | p_ids)`` (Meng et al. 2022, Sec. 2.1).

    Returns ``{"effects": [IE_0, ...], "clean_logp", "corrupted_logp", "sigma"}`` where
    ``IE_l = log p_restored_l - log p_corrupted`` (log-probabilities summed over the response tokens and
    averaged over ``samples`` noise draws). The same noise draws are used for every layer, so a layer
    whose MLP output is the same clean and corrupted (e.g. a zero matrix) has an effect of exactly 0.

    Cost: one clean and one corrupted pass, then for layer l only blocks l..L-1 are replayed from the
    corrupted run's input to block l (``machinery.replay_blocks``, with the arguments the model called
    them with), and the LM head is applied only at the response positions.
    """
    if not p_ids or not r_ids:
        raise DetoxEditError("causal tracing needs a non-empty prompt and response")
    dev = next(model.parameters()).device
    blocks = list(arch.blocks(model))
    n_layers = len(blocks)
    mlps = [arch.down_proj(model, layer) for layer in range(n_layers)]
    emb, head = model.get_input_embeddings(), OutputHead(model)
    P, R = len(p_ids), len(r_ids)
    ids = torch.tensor([p_ids + r_ids], device=dev)
    positions = torch.arange(P - 1, P + R - 1, device=dev)
    targets = ids[0, P:]

    def logp(last_hidden: torch.Tensor) -> torch.Tensor:
        """[B, T, d] hidden states after the last block -> [B] summed response-token log-probs."""
        lp = F.log_softmax(head(last_hidden[:, positions], upcast=True), dim=-1)
        return lp.gather(-1, targets.expand(lp.shape[0], R)[..., None]).squeeze(-1).sum(-1)

    with capture_outputs(mlps + [emb, blocks[-1]]) as outs:
        model(input_ids=ids, use_cache=False)
    clean_mlp, clean_emb = outs[:n_layers], outs[n_layers]
    clean = float(logp(outs[-1])[0])
    sigma = float(clean_emb[0, :P].float().std())
    gen = torch.Generator(device="cpu").manual_seed(seed)
    eps = torch.randn((samples, P, clean_emb.shape[-1]), generator=gen) * (noise * sigma)
    eps = eps.to(dev, clean_emb.dtype)

    def corrupt(_mod, _inp, out):
        out = out.clone()
        out[:, :P] += eps
        return out

    with hooks(lambda: [emb.register_forward_hook(corrupt)]), capture_calls(blocks) as calls, \
            capture_outputs([blocks[-1]]) as last:
        model(input_ids=ids.expand(samples, -1), use_cache=False)
    corrupted = float(logp(last[0]).mean())

    def restore(layer):
        def hook(_mod, _inp, out):
            out = out.clone()
            out[:, :P] = clean_mlp[layer][:, :P]
            return out
        return hook

    effects = []
    for layer in range(n_layers):
        with hooks(lambda: [mlps[layer].register_forward_hook(restore(layer))]):
            h = replay_blocks(blocks[layer:], calls[layer:], block_input(calls[layer]))
        effects.append(float(logp(h).mean()) - corrupted)
    return {"effects": effects, "clean_logp": clean, "corrupted_logp": corrupted, "sigma": sigma}


def best_layer(effects: list[float]) -> int:
    """The layer with the largest indirect effect; ties go to the lower layer."""
    return max(range(len(effects)), key=lambda i: (effects[i], -i))


# --------------------------------------------------------------------------------------------------
# 2. Constrained fine-tuning of one down-projection
# --------------------------------------------------------------------------------------------------
def tune_constrained(model, batch, layer: int, hp: FTLHyperParams) -> tuple[torch.Tensor, list[dict], float, dict]:
    """Adam on ``W = W0 + D`` with ``D`` projected onto ``[-eps, eps]`` after each step (ROME's FT-L).

    Only row 0 of the shared ``EditBatch`` (adversarial input -> safe response) enters the loss.
    Parametrising by the offset ``D`` gives the same gradients and Adam states as tuning ``W`` itself,
    and makes the clamp exact: the returned float32 ``D`` satisfies ``|D| <= eps`` entry by entry.
    Weight decay acts on the full matrix ``W`` (Adam's coupled L2, as in tuning ``W`` directly). Returns
    (D, per-step losses recorded *before* each update, loss after the last step, timings).
    """
    w0 = arch.down_proj(model, layer).weight.detach().float()
    offset = torch.zeros_like(w0, requires_grad=True)
    project = Projector.down_proj(model, layer, w0)
    t0 = time.perf_counter()
    forward = FastForward(model, batch, layer, project)
    t_prep = time.perf_counter() - t0
    opt = torch.optim.Adam([offset], lr=hp.lr)
    eps = hp.norm_constraint

    def loss_now() -> torch.Tensor:
        project.weight = w0 + offset
        logits_e, _ = forward()
        return F.cross_entropy(logits_e.float(), batch.edit_targets.to(logits_e.device))

    losses: list[dict] = []
    t1 = time.perf_counter()
    for step in range(hp.num_steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_now()
        losses.append({"step": step, "loss": loss.item()})
        loss.backward()
        if hp.weight_decay:
            offset.grad.add_(w0 + offset.detach(), alpha=hp.weight_decay)
        opt.step()
        if eps is not None:
            with torch.no_grad():
                offset.clamp_(-eps, eps)
    with torch.no_grad():
        final = loss_now().item()
    timings = {"prepare_s": t_prep, "train_s": time.perf_counter() - t1}
    return offset.detach(), losses, final, timings


# --------------------------------------------------------------------------------------------------
# 3. The method
# --------------------------------------------------------------------------------------------------
@register_method("ft-l")
class FTL:
    """FT-L editor: one layer's down-projection, one instance, an L-infinity ball around the original."""

    hparams_class = FTLHyperParams

    def __init__(self, hparams: FTLHyperParams | None = None):
        self.hparams = hparams or FTLHyperParams()
        self.hparams.validate()

    def choose_layer(self, model, tok, case: EditCase) -> tuple[int, dict | None]:
        hp = self.hparams
        if hp.layer_selection == "configured":
            return int(hp.layers[0]), None
        budget = max(8, hp.max_length - hp.trace_tokens)
        p_ids = truncate_left(tok, with_suffix(case.prompt, hp.suffix_system_prompt), budget, hp.prompt_format)
        r_ids = own_response(model, tok, p_ids, hp.trace_tokens, hp.prompt_format)
        trace = causal_trace(model, p_ids, r_ids, hp.trace_noise, hp.trace_samples, hp.seed)
        trace["response_tokens"] = len(r_ids)
        trace["response"] = tok.decode(r_ids, skip_special_tokens=True)
        return best_layer(trace["effects"]), trace

    def edit(self, model, tok, case: EditCase) -> Edit:
        if case is None:
            raise DetoxEditError("FT-L edits on one instance; it needs a case")
        hp = self.hparams
        t0 = time.perf_counter()
        layer, trace = self.choose_layer(model, tok, case)
        t_locate = time.perf_counter() - t0
        w0 = arch.down_proj(model, layer).weight  # also a range check with a clear message
        batch = build_batch(tok, case, hp)
        offset, losses, final, timings = tune_constrained(model, batch, layer, hp)
        name = arch.down_proj_param_name(model, layer)
        if w0.dtype == torch.float32:
            delta = offset
        else:  # what the model's dtype can hold: round W0 + D, as applying the edit will
            delta = (w0.detach().float() + offset).to(w0.dtype).float() - w0.detach().float()
        meta = {
            "method": "ft-l", "case_id": case.case_id, "layer": layer, "param": name,
            "layer_selection": hp.layer_selection, "trace": trace,
            "losses": losses, "final_loss": final, "steps_run": len(losses),
            "max_abs_delta": float(delta.abs().max()) if delta.numel() else 0.0,
            "timings": {"locate_s": t_locate, **timings, "total_s": time.perf_counter() - t0},
            **edit_provenance(model, hp, {name: w0}),
        }
        edit = Edit(method="ft-l", deltas={name: delta.cpu()}, meta=meta)
        t1 = time.perf_counter()
        meta["validation"] = validate_edit(model, tok, case, edit, hp, objective=(1.0, 0.0))  # NLL only
        meta["unsafe_source"] = case.unsafe_source
        meta["timings"]["validate_s"] = time.perf_counter() - t1
        return edit
