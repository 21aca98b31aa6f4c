"""Shared method machinery: the pieces DINM, FT-L, MEND and the trained methods (SFT, DPO, Ext-Sub) have
in common. A method file holds only its own algorithm and imports these by name.

1. **Sequences and batches.** Prompt + response token ids (chat template, suffix system prompt, prompt
   cut from the left), right padding, and the positions and targets a loss reads.
2. **Parameter layout.** Every weight change is computed as ``[out, in]`` (``nn.Linear``'s layout);
   GPT-2's ``Conv1D`` stores ``[in, out]`` and gets the transpose. The layout itself is an
   architecture fact and comes from ``detoxedit/models/arch.py``.
3. **Logits.** The output head (final norm, LM head) and the final-logit soft-cap, whose value comes
   from ``arch.logit_softcap``.
4. **The KL term** to the unedited model's next-token distributions (DINM's ``L_c``, MEND's ``L_loc``).
5. **The frozen-prefix forward.** Everything below an edited matrix is frozen, so one no-grad pass per
   input records what higher blocks need, and a training step replays only the blocks above it:
   ``FastForward`` (one tuned down-projection, DINM and FT-L), ``StackedForward`` (the same for several
   cases' copies of one down-projection in one batch, DINM's ``edit_many``), ``Replay`` (hooks on several
   blocks, MEND), and the ``replay_blocks`` loop they and FT-L's causal tracing share.
6. **Provenance.** The settings, model, dtype and base-weight fingerprints an instance edit records.
7. **Hidden-state capture.** ``block_outputs``, what DINM's locator and the localisation study compare.
8. **The model's own answer.** ``own_response``, greedy token ids (FT-L's causal trace, edit validation).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detoxedit.methods.base import EditCase, param_fingerprint
from detoxedit.models import arch
from detoxedit.models.generate import cut_response, pad_id, response_ids, stop_token_ids, truncate_left, with_suffix
from detoxedit.models.hooks import (capture_calls, capture_inputs, capture_outputs, first_tensor,
                                    replace_output)

# --------------------------------------------------------------------------------------------------
# 1. Sequences and batches
# --------------------------------------------------------------------------------------------------
DEFAULT_KNOWLEDGE = (
    "What is the capital of France?",
    "The capital of France is Paris.",
)
"""Knowledge-constraint pair used when a case has none (a harmless instruction with a known answer)."""


def prompt_response_ids(tok, prompt: str, response: str, hp) -> tuple[list[int], int]:
    """``(prompt ids + response ids, number of prompt ids)`` for one training sequence.

    The prompt is ``X + s`` of DINM's Eq. 2 (the input plus the suffix system prompt
    ``hp.suffix_system_prompt``, in the chat template of ``hp.prompt_format``, cut from the left to fit
    ``hp.max_length``); the response ids are tokenised on their own and end with the end-of-turn token
    (a response longer than ``max_length - 16`` is cut to ``max_length // 2`` ids). Training and
    evaluation thus see exactly the same token ids. ``hp`` is any method's settings with these fields.
    """
    r_ids = response_ids(tok, response, hp.prompt_format)
    r_ids = r_ids[: max(1, hp.max_length // 2)] if len(r_ids) > hp.max_length - 16 else r_ids
    p_ids = truncate_left(tok, with_suffix(prompt, hp.suffix_system_prompt),
                          hp.max_length - len(r_ids), hp.prompt_format)
    return p_ids + r_ids, len(p_ids)


def right_pad(seqs: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, ``[len(seqs), longest]``, padded on the right so that every real
    position keeps its position id."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


@dataclass
class EditBatch:
    """The two rows an instance edit reads. Row 0: adversarial input + suffix, then the safe response
    (DINM's ``L_e``, Eq. 2). Row 1: knowledge prompt + suffix, then its answer (DINM's ``L_c``, Eq. 3).
    Right-padded, so every real position keeps its position id."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    edit_positions: torch.Tensor
    """Positions in row 0 whose next-token distribution predicts a safe-response token."""
    edit_targets: torch.Tensor
    kl_positions: torch.Tensor
    """Positions in row 1 whose next-token distribution predicts a knowledge-answer token."""
    extra_kl: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    """Further KL rows (row index, positions) after the knowledge pair: DINM's harmless locality set."""

    @property
    def n_knowledge(self) -> int:
        """How many of the KL positions are the knowledge answer's (they come first)."""
        return int(self.kl_positions.numel())


def build_batch(tok, case: EditCase, hp, extra: Sequence[tuple[list[int], int]] = ()) -> EditBatch:
    """The ``EditBatch`` of one case (``DEFAULT_KNOWLEDGE`` when the case has no knowledge pair).
    ``extra``: further ``(ids, n_prompt)`` sequences whose continuation positions join the KL term."""
    k_prompt = case.knowledge_prompt or DEFAULT_KNOWLEDGE[0]
    k_answer = case.knowledge_answer or DEFAULT_KNOWLEDGE[1]
    seq_e, pe = prompt_response_ids(tok, case.prompt, case.safe, hp)
    seq_k, pk = prompt_response_ids(tok, k_prompt, k_answer, hp)
    ids, mask = right_pad([seq_e, seq_k, *(seq for seq, _ in extra)], pad_id(tok))
    return EditBatch(
        input_ids=ids, attention_mask=mask,
        edit_positions=torch.arange(pe - 1, len(seq_e) - 1),
        edit_targets=torch.tensor(seq_e[pe:]),
        kl_positions=torch.arange(pk - 1, len(seq_k) - 1),
        extra_kl=[(2 + i, torch.arange(n - 1, len(seq) - 1)) for i, (seq, n) in enumerate(extra)],
    )


# --------------------------------------------------------------------------------------------------
# 2. Parameter layout
# --------------------------------------------------------------------------------------------------
def io_features(weight: torch.Tensor, layout: str) -> tuple[int, int]:
    """``(d_in, d_out)`` of a projection weight stored in ``layout`` (``arch``: ``linear`` or ``conv1d``)."""
    if layout == "conv1d":  # GPT-2's Conv1D: weight [in, out]
        return int(weight.shape[0]), int(weight.shape[1])
    return int(weight.shape[1]), int(weight.shape[0])


def to_param_layout(delta_out_in: torch.Tensor, layout: str) -> torch.Tensor:
    """A ``[out, in]`` delta in the weight's own layout (transposed for GPT-2's ``Conv1D``)."""
    return delta_out_in.T.contiguous() if layout == "conv1d" else delta_out_in.contiguous()


class Projector:
    """``x -> W x + b`` with a tuned float32 copy ``W`` (in the module's own layout) cast to the input's
    dtype; ``b`` is the module's bias. Stands in for a frozen projection module during tuning."""

    def __init__(self, module: nn.Module, weight: torch.Tensor, layout: str):
        self.bias = getattr(module, "bias", None)
        self.weight, self.layout = weight, layout

    @classmethod
    def down_proj(cls, model, layer: int, weight: torch.Tensor) -> "Projector":
        """The projector of block ``layer``'s MLP down-projection (module and layout from ``arch``)."""
        return cls(arch.down_proj(model, layer), weight, arch.spec_for(model).down_proj_layout)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        if self.layout == "conv1d":  # GPT-2's Conv1D keeps the weight as [in, out]
            y = x @ w
            return y + self.bias if self.bias is not None else y
        return F.linear(x, w, self.bias)


# --------------------------------------------------------------------------------------------------
# 3. Logits
# --------------------------------------------------------------------------------------------------
def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Final-logit soft-capping ``c * tanh(logits / c)`` (Gemma 2), or the logits unchanged when ``cap``
    is None. The value comes from ``arch.logit_softcap(model)``."""
    return torch.tanh(logits / cap) * cap if cap else logits


class OutputHead:
    """Hidden states after the last block -> logits: final norm, LM head, soft-cap (all from ``arch``)."""

    def __init__(self, model):
        self.final_norm, self.lm_head = arch.final_norm(model), arch.lm_head(model)
        self.cap = arch.logit_softcap(model)

    def __call__(self, h: torch.Tensor, upcast: bool = False) -> torch.Tensor:
        """``upcast``: cast the logits to float32 before the soft-cap (otherwise it runs in the model's dtype)."""
        logits = self.lm_head(self.final_norm(h))
        return softcap(logits.float() if upcast else logits, self.cap)


# --------------------------------------------------------------------------------------------------
# 4. The KL term to the unedited model
# --------------------------------------------------------------------------------------------------
def reference_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """``log p_0``: the unedited model's next-token log-probabilities (float32), the KL's reference."""
    return F.log_softmax(logits.float(), dim=-1)


def kl_to_reference(base_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``KL(p_0 || p_W) = sum_v p_0(v) (log p_0(v) - log p_W(v))``.

    DINM's knowledge constraint ``L_c`` (Wang et al. 2024, Eq. 3; in ``L = c_edit * L_e + L_c``, Eq. 4)
    and MEND's locality loss ``L_loc`` (Mitchell et al. 2022, Eq. 5), both on the general-knowledge pair.
    ``base_logp`` is ``reference_logprobs`` of the unedited model; ``logits`` are the edited model's.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    return (base_logp.exp() * (base_logp - logp)).sum(-1).mean()


# --------------------------------------------------------------------------------------------------
# 5. The frozen-prefix forward
# --------------------------------------------------------------------------------------------------
def block_input(call: tuple[tuple, dict]) -> torch.Tensor:
    """The hidden state a block was called with, from one ``capture_calls`` record ``(args, kwargs)``."""
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


def replay_blocks(blocks: Sequence[nn.Module], calls: Sequence[tuple[tuple, dict]],
                  h: torch.Tensor) -> torch.Tensor:
    """Run ``blocks`` in order from hidden state ``h``, each with the other arguments (attention masks,
    rotary embeddings) the model called it with (``capture_calls``); returns the last block's output.
    Hooks active on the blocks' modules apply."""
    for block, (args, kwargs) in zip(blocks, calls):
        if args:
            h = first_tensor(block(h, *args[1:], **kwargs))
        else:
            h = first_tensor(block(**{**kwargs, "hidden_states": h}))
    return h


def _select(hidden_or_logits: torch.Tensor, batch: EditBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Row 0 at the edit positions; the KL positions (knowledge row first, then ``extra_kl``'s rows)."""
    dev = hidden_or_logits.device
    kl = hidden_or_logits[1, batch.kl_positions.to(dev)]
    if batch.extra_kl:
        kl = torch.cat([kl, *(hidden_or_logits[row, pos.to(dev)] for row, pos in batch.extra_kl)], dim=0)
    return hidden_or_logits[0, batch.edit_positions.to(dev)], kl


class NaiveForward:
    """The whole model, every step, with block ``layer``'s down-projection output replaced by
    ``project``'s. The reference the fast path is checked against (``tests/test_dinm.py``).
    Returns the logits at the batch's edit and KL positions."""

    def __init__(self, model, batch: EditBatch, layer: int, project: Projector):
        self.model, self.batch, self.project = model, batch, project
        self.module = arch.down_proj(model, layer)
        dev = next(model.parameters()).device
        self.ids, self.mask = batch.input_ids.to(dev), batch.attention_mask.to(dev)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        with replace_output(self.module, self.project):
            logits = self.model(input_ids=self.ids, attention_mask=self.mask, use_cache=False).logits
        return _select(logits, self.batch)


class FastForward:
    """``NaiveForward``'s logits, replaying only what depends on the tuned down-projection of ``layer``
    (the fast path of DINM's Sec. 3.2 tuning, also FT-L's).

    One no-grad forward pass records (a) the down-projection's input ``x``, (b) the rest of block
    ``layer``'s output, ``r = h_l - post(W0 x)`` (``post`` is identity, or Gemma's post-feed-forward
    norm), (c) the exact arguments each higher block was called with, and (d) the unedited logits at
    the loss positions (``base_logits``). A call then computes ``h_l = r + post(W x)``, replays only the
    blocks above ``layer`` and projects to the vocabulary only at the positions the loss reads.
    """

    def __init__(self, model, batch: EditBatch, layer: int, project: Projector):
        self.batch = batch
        self.base_logits = _select(self._capture(model, batch.input_ids, batch.attention_mask, layer, project), batch)

    def _capture(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int,
                 project) -> torch.Tensor:
        """The no-grad pass: records (a)-(c) of the class docstring; returns the unedited logits of every row."""
        self.model, self.project = model, project
        blocks = arch.blocks(model)
        self.above = list(blocks)[layer + 1:]
        module = arch.down_proj(model, layer)
        self.post = arch.mlp_out_norm(model, layer)
        self.head = OutputHead(model)
        dev = next(model.parameters()).device
        with torch.no_grad(), capture_calls(self.above) as calls, capture_inputs([module]) as xin, \
                capture_outputs([module, blocks[layer]]) as outs:
            out = model(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev), use_cache=False)
        self.calls = calls
        self.x = xin[0]
        y0, h0 = outs
        self.rest = h0 - (self.post(y0) if self.post is not None else y0)
        return out.logits

    def hidden(self) -> torch.Tensor:
        """The hidden states leaving the last block, every row and position, with ``project``'s matrix."""
        y = self.project(self.x)
        h = self.rest + (self.post(y) if self.post is not None else y)
        return replay_blocks(self.above, self.calls, h)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        he, hk = _select(self.hidden(), self.batch)
        logits = self.head(torch.cat([he, hk], dim=0))
        return logits[: he.shape[0]], logits[he.shape[0]:]


def stack_batches(batches: Sequence[EditBatch], pad: int) -> tuple[torch.Tensor, torch.Tensor, list[slice]]:
    """Several cases' batches as one: ``(input_ids, attention_mask, rows)``, the cases' rows one after
    another, right-padded (with ``pad``) to the longest, and the rows of case k, ``rows[k]``. Right padding
    keeps every real position's position id, so each row reads what it reads in its own batch."""
    width = max(int(b.input_ids.shape[1]) for b in batches)
    ids = torch.cat([F.pad(b.input_ids, (0, width - b.input_ids.shape[1]), value=pad) for b in batches])
    mask = torch.cat([F.pad(b.attention_mask, (0, width - b.attention_mask.shape[1]), value=0) for b in batches])
    rows, at = [], 0
    for b in batches:
        rows.append(slice(at, at + int(b.input_ids.shape[0])))
        at += int(b.input_ids.shape[0])
    return ids, mask, rows


class CaseProjector:
    """``Projector`` with one tuned matrix per case: rows ``rows[k]`` of the input go through ``weights[k]``
    (each a float32 copy in the module's own layout, set by :meth:`set_weights` before a call). Several
    cases' edits of one matrix then share one batch, each row seeing only its own case's matrix, as
    ``models/rowedits.py`` does at inference."""

    def __init__(self, module: nn.Module, layout: str, rows: Sequence[slice]):
        self.rows = list(rows)
        self.parts = [Projector(module, None, layout) for _ in self.rows]

    def set_weights(self, weights: Sequence[torch.Tensor]) -> None:
        for part, w in zip(self.parts, weights, strict=True):
            part.weight = w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x[rows]) for part, rows in zip(self.parts, self.rows)], dim=0)


class StackedForward(FastForward):
    """``FastForward`` for several cases that tune the same down-projection, in one batch: the cases'
    ``EditBatch`` rows are stacked (:func:`stack_batches`), one no-grad pass records the frozen prefix of
    them all, and a call, given one matrix per case, replays the blocks above ``layer`` once for every row
    (case k's rows through matrix k, :class:`CaseProjector`) and returns each case's ``(edit logits, KL
    logits)``, which are those of its own ``FastForward`` up to float rounding. ``base_logits``: each
    case's unedited logits at its loss positions. Rows never mix (attention, norms and projections act per
    row and position), so a loss summed over the cases gives each matrix the gradient of its own case's
    loss alone (docs/dinm.md, "Several cases at once")."""

    def __init__(self, model, batches: Sequence[EditBatch], layer: int, pad: int):
        self.batches = list(batches)
        ids, mask, self.rows = stack_batches(self.batches, pad)
        project = CaseProjector(arch.down_proj(model, layer), arch.spec_for(model).down_proj_layout, self.rows)
        logits = self._capture(model, ids, mask, layer, project)
        self.base_logits = [_select(logits[rows], b) for rows, b in zip(self.rows, self.batches)]

    def __call__(self, weights: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.project.set_weights(weights)
        h = self.hidden()
        parts = [t for rows, b in zip(self.rows, self.batches) for t in _select(h[rows], b)]
        logits = self.head(torch.cat(parts, dim=0)).split([int(t.shape[0]) for t in parts])
        return [(logits[2 * k], logits[2 * k + 1]) for k in range(len(self.batches))]


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class Replay:
    """The frozen model on one unpadded sequence, from block ``first`` up (MEND's form of the fast
    path, for edits on several blocks): one no-grad pass records what enters block ``first`` and the
    arguments of every block from there up; ``logits`` replays only those blocks (with whatever hooks
    are active on their modules) and projects the requested positions to the vocabulary (float32)."""

    def __init__(self, model, ids: torch.Tensor, first: int):
        self.model = model
        self.above = list(arch.blocks(model))[first:]
        self.head = OutputHead(model)
        self.device = next(model.parameters()).device
        extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
        with torch.no_grad(), capture_calls(self.above) as calls:
            model(input_ids=ids[None].to(self.device), use_cache=False, **extra)
        self.calls = calls
        self.h0 = block_input(calls[0])

    def logits(self, positions: torch.Tensor) -> torch.Tensor:
        h = replay_blocks(self.above, self.calls, self.h0)
        return self.head(h[0, positions.to(self.device)], upcast=True)


# --------------------------------------------------------------------------------------------------
# 6. What an edit records about the model it was made on
# --------------------------------------------------------------------------------------------------
def edit_provenance(model, hp, weights: dict[str, torch.Tensor]) -> dict:
    """The fields an instance edit's ``meta`` ends with: the settings, the model, the edited weights'
    dtype (the first's) and the fingerprints of the base weights the deltas apply to (by name)."""
    first = next(iter(weights.values()))
    return {"hparams": hp.to_dict(), "model": getattr(model, "detoxedit_spec", None),
            "dtype": str(first.dtype).replace("torch.", ""),
            "base_fingerprints": {name: param_fingerprint(w) for name, w in weights.items()}}


# --------------------------------------------------------------------------------------------------
# 7. Hidden-state capture
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def block_outputs(model, input_ids: list[int]) -> list[torch.Tensor]:
    """Hidden states leaving every decoder block for one unpadded sequence: ``[n_layers] x [T, d]``
    (float32). DINM's locator compares them (Wang et al. 2024, Sec. 3.1), as does the localisation study."""
    blocks = arch.blocks(model)
    device = next(model.parameters()).device
    with capture_outputs(list(blocks)) as outs:
        model(input_ids=torch.tensor([input_ids], device=device), use_cache=False)
    return [o[0].float() for o in outs]


# --------------------------------------------------------------------------------------------------
# 8. The model's own answer
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def _greedy(model, tok, p_ids: list[int], n_tokens: int, prompt_format: str) -> tuple[list[int], list[int]]:
    """(the new ids of a greedy decoding of at most ``n_tokens`` after ``p_ids``, the stop ids)."""
    from transformers import GenerationConfig

    dev = next(model.parameters()).device
    stops = stop_token_ids(tok, prompt_format)
    cfg = GenerationConfig(max_new_tokens=n_tokens, do_sample=False, temperature=None, top_p=None,
                           top_k=None, pad_token_id=pad_id(tok), eos_token_id=stops or None,
                           bos_token_id=tok.bos_token_id)
    ids = torch.tensor([p_ids], device=dev)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
    return out[0, len(p_ids):].tolist(), stops


def own_response(model, tok, p_ids: list[int], n_tokens: int, prompt_format: str,
                 keep_end: bool = False) -> list[int]:
    """The model's greedy response to ``p_ids`` (at most ``n_tokens`` ids, cut at the end of turn).
    ``keep_end``: a response that ended within ``n_tokens`` keeps the end-of-turn id it produced as its
    last id."""
    new, stops = _greedy(model, tok, p_ids, n_tokens, prompt_format)
    cut = cut_response(new, stops)
    if keep_end and len(cut) < len(new):
        return new[: len(cut) + 1]
    return cut or new[:1]  # a response that is only an end of turn: trace that token


def greedy_ids(model, tok, p_ids: list[int], n_tokens: int, prompt_format: str) -> tuple[list[int], bool]:
    """``(response ids cut before the end of turn, whether it ended within n_tokens)``, greedy."""
    new, stops = _greedy(model, tok, p_ids, n_tokens, prompt_format)
    cut = cut_response(new, stops)
    return cut, len(cut) < len(new)
