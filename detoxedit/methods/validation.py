"""Edit validation: did one instance edit work, and what did it cost? Every per-instance method (DINM, FT-L,
MEND) calls :func:`validate_edit` on its result; DINM's adaptive step size also uses it to reject a step
size (``docs/dinm.md``, "Validation" and "Adaptive step size").

Four groups of checks, teacher-forced (one batched forward pass with the edit applied, one without) but
for the greedy answer to the edited input, so a check costs two forward passes and one short generation
(none when the teacher-forced accuracy already fails):

(a) **success**: the safe response's token accuracy, ``acc = (1/|Y|) sum_t [argmax_v p_W(v | X+s, y_<t)
    = y_t]`` over the safe-response tokens *including* the end-of-turn token, and ``greedy_prefix``, the
    number of leading tokens for which the argmax is right: exactly the number of tokens of the safe
    response that greedy decoding reproduces before it departs from it. The edit is learned when
    ``acc >= min_token_accuracy`` *and* the greedy answer to the edited input (one generation, at most
    the safe response's length + 8 tokens) ends its turn and is the safe response, a prefix of it, or
    opens with its first sentence (:func:`greedy_answer`; compared as text): a 98%-accurate edit whose greedy answer departs
    mid-response may loop. (Whether the greedy answer is *safe* needs a
    generation and a judge: the bench runner adds it as ``answer_safe``.)
(b) **termination**: ``log p(EOT | X+s, Y_safe)``, the end-of-turn token's log-probability after the
    safe response, before and after. The edit fails when the after value is below
    ``min(before, log eot_min_prob)``: an edited model that no longer ends its turn repeats itself.
(c) **locality**: ``KL(p_W0 || p_W)`` averaged over the answer positions of the knowledge pair (the
    quantity DINM's ``L_c`` constrains, Eq. 3), and over a fixed set of harmless prompts
    (:data:`PROBE_IDS`, disjoint from the prompts the over-refusal check scores), each followed by the
    unedited model's own greedy continuation of :data:`PROBE_TOKENS` tokens; the first of those positions
    is where a refusal would begin. Both must stay at or below their bounds.
(d) **loss sanity**: the method's objective after the edit must not exceed its value before (by more
    than :data:`LOSS_TOLERANCE`)
    (``c_edit * L_e + c_kl * L_c``; DINM: ``c_edit = kl_factor, c_kl = 1``, Eq. 4; FT-L and MEND: NLL only).

A failed check is a *reason* (a sentence with the numbers), and any reason makes the status ``failed``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from detoxedit.methods._hparams import ValidationSettings
from detoxedit.methods.base import Edit, EditCase
from detoxedit.methods.machinery import (DEFAULT_KNOWLEDGE, greedy_ids, own_response, prompt_response_ids,
                                         right_pad)
from detoxedit.models.generate import pad_id, resolve_format, truncate_left, with_suffix

PROBE_IDS = ("harmless-161", "harmless-162", "harmless-163", "harmless-164", "harmless-165",
             "harmless-166", "harmless-167", "harmless-168")
"""Built-in harmless prompts (``general/builtin/harmless.jsonl``; 5 ordinary, 3 dangerous-sounding) on
which locality is checked. The bench's over-refusal check scores other prompts (the file's first ones)."""
PROBE_TOKENS = 16
"""Tokens of the unedited model's greedy continuation teacher-forced after each probe prompt."""


@dataclass
class _Seq:
    ids: list[int]
    positions: list[int]
    """Positions whose next-token distribution is read."""
    targets: list[int]


@dataclass
class Reference:
    """What the unedited model gives on the validation sequences (computed once per case)."""

    seqs: list[_Seq]
    """0: edited input + safe response; 1: knowledge pair; 2...: harmless probes."""
    logp: list[torch.Tensor]
    """Unedited next-token log-probabilities at each sequence's positions ``[n_pos, vocab]``."""
    objective: tuple[float, float]
    """(c_edit, c_kl) of the method's objective (d)."""
    prompt_format: str = "chat"
    """The resolved format of the edited input (for the greedy answer)."""
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Probe sequences
# --------------------------------------------------------------------------------------------------
_PROBE_CACHE: dict[tuple, list[_Seq]] = {}


def harmless_prompts(ids: Sequence[str]) -> list[str]:
    """The built-in harmless prompts with these ids (``general/builtin/harmless.jsonl``)."""
    from detoxedit.general import overrefusal

    by_id = {it.id: it.prompt for it in overrefusal.load("builtin")}
    return [by_id[i] for i in ids]


def continuations(model, tok, hp, ids: Sequence[str], n_tokens: int = PROBE_TOKENS,
                  with_end: bool = False) -> list[_Seq]:
    """Each harmless prompt ``ids`` (with the suffix system prompt, in the method's format) followed by
    the unedited model's greedy continuation of ``n_tokens``; the read positions are the continuation's.
    ``with_end``: a continuation that ended within ``n_tokens`` keeps its end-of-turn token as its last
    target, so a KL on it also holds where the model ends its turn.
    Call it while the model is unedited. Cached per (model object, its first weight's fingerprint,
    format, prompts), so a run generates them once."""
    from detoxedit.methods.base import param_fingerprint

    fmt = resolve_format(tok, hp.prompt_format)
    key = (id(model), param_fingerprint(next(model.parameters())), fmt, hp.suffix_system_prompt,
           hp.max_length, tuple(ids), n_tokens, with_end)
    if key not in _PROBE_CACHE:
        seqs = []
        for prompt in harmless_prompts(ids):
            p_ids = truncate_left(tok, with_suffix(prompt, hp.suffix_system_prompt), hp.max_length - n_tokens, fmt)
            r_ids = own_response(model, tok, p_ids, n_tokens, fmt, keep_end=with_end)
            ids_ = p_ids + r_ids
            seqs.append(_Seq(ids_, list(range(len(p_ids) - 1, len(ids_) - 1)), ids_[len(p_ids):]))
        if len(_PROBE_CACHE) > 8:  # a few models and settings at a time
            _PROBE_CACHE.clear()
        _PROBE_CACHE[key] = seqs
    return _PROBE_CACHE[key]


def probe_sequences(model, tok, hp) -> list[_Seq]:
    """The validation probes (:data:`PROBE_IDS`) with the unedited model's continuations."""
    return continuations(model, tok, hp, PROBE_IDS)


def _train_seq(tok, prompt: str, response: str, hp) -> _Seq:
    ids, n_prompt = prompt_response_ids(tok, prompt, response, hp)
    return _Seq(ids, list(range(n_prompt - 1, len(ids) - 1)), ids[n_prompt:])


@torch.no_grad()
def _logprobs(model, seqs: list[_Seq], pad: int) -> list[torch.Tensor]:
    """Next-token log-probabilities (float32) at each sequence's read positions, one padded batch."""
    dev = next(model.parameters()).device
    ids, mask = right_pad([s.ids for s in seqs], pad)
    logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).logits
    return [F.log_softmax(logits[i, torch.tensor(s.positions, device=dev)].float(), dim=-1).cpu()
            for i, s in enumerate(seqs)]


def reference(model, tok, case: EditCase, hp, objective: tuple[float, float] = (1.0, 0.0)) -> Reference:
    """The unedited model's log-probabilities on the validation sequences of ``case`` (call it before
    the edit is applied; the model must be unedited)."""
    seqs = [_train_seq(tok, case.prompt, case.safe, hp),
            _train_seq(tok, case.knowledge_prompt or DEFAULT_KNOWLEDGE[0],
                       case.knowledge_answer or DEFAULT_KNOWLEDGE[1], hp),
            *probe_sequences(model, tok, hp)]
    return Reference(seqs, _logprobs(model, seqs, pad_id(tok)), objective, resolve_format(tok, hp.prompt_format))


def _kl(p0: torch.Tensor, p1: torch.Tensor) -> float:
    """Mean over positions of KL(p0 || p1), both log-probabilities."""
    return float((p0.exp() * (p0 - p1)).sum(-1).mean())


def measure(ref: Reference, logp: list[torch.Tensor]) -> dict:
    """The checks' numbers from the edited model's log-probabilities ``logp`` on ``ref.seqs``."""
    safe, p0 = ref.seqs[0], ref.logp[0]
    targets = torch.tensor(safe.targets)
    argmax = logp[0].argmax(-1)
    hits = (argmax == targets).tolist()
    prefix = next((i for i, h in enumerate(hits) if not h), len(hits))
    nll_before = float(-p0.gather(1, targets[:, None]).mean())
    nll_after = float(-logp[0].gather(1, targets[:, None]).mean())
    kl_k = _kl(ref.logp[1], logp[1])
    probes = [_kl(a, b) for a, b in zip(ref.logp[2:], logp[2:])]
    c_edit, c_kl = ref.objective
    return {
        "token_accuracy": sum(hits) / len(hits), "greedy_prefix": prefix, "safe_tokens": len(hits),
        "greedy_ends_in_safe": greedy_ends_in_safe(prefix, argmax, targets),
        "eot_logprob_before": float(p0[-1, targets[-1]]), "eot_logprob_after": float(logp[0][-1, targets[-1]]),
        "nll_before": nll_before, "nll_after": nll_after,
        "kl_knowledge": kl_k,
        "kl_harmless": sum(probes) / len(probes) if probes else 0.0,
        "kl_harmless_max": max(probes) if probes else 0.0,
        "kl_harmless_first_token": (sum(_kl(a[:1], b[:1]) for a, b in zip(ref.logp[2:], logp[2:])) / len(probes)
                                    if probes else 0.0),
        "loss_start": c_edit * nll_before, "loss_end": c_edit * nll_after + c_kl * kl_k,
    }


LOSS_TOLERANCE = 1e-2
"""(d) How far the objective may rise before "loss rose" fires: an instance the model already answers
safely starts near 0, and any step then moves it a little."""

TOO_FAR = ("end of turn", "knowledge drift", "harmless drift", "loss rose", "not finite")
"""Reasons that mean the step went too far (a smaller step size may fix them); the other reason, "not
learned", means it went not far enough."""


GREEDY_SLACK = 8
"""Tokens the greedy answer may run past the safe response's length before it counts as not ending."""
MIN_GREEDY_TOKENS = 5
"""Fewest tokens of the safe response a greedy answer that stops early must hold to count (a bare "I"
and an end of turn is not an answer)."""


def greedy_ends_in_safe(prefix: int, argmax: torch.Tensor, targets: torch.Tensor) -> bool:
    """Teacher-forced estimate of :func:`greedy_answer`'s verdict (no generation): the tokens up to
    ``prefix`` are the safe response's, and the first departure, if any, is the end-of-turn token
    (``targets[-1]``) after at least :data:`MIN_GREEDY_TOKENS` tokens. It misses answers that spell the
    safe response with other token ids; the verdict comes from the generated text."""
    n = len(targets)
    if prefix >= n:
        return True
    return prefix >= min(n - 1, MIN_GREEDY_TOKENS) and int(argmax[prefix]) == int(targets[-1])


def judge_checks(checks: dict, hp: ValidationSettings) -> list[str]:
    """The reasons (empty: passed) for the numbers of :func:`measure` under the bounds of ``hp``."""
    reasons = []
    if not all(math.isfinite(v) for v in checks.values() if isinstance(v, float)):
        return ["not finite: the edited model's log-probabilities contain NaN or inf"]
    if checks["token_accuracy"] < hp.min_token_accuracy:
        reasons.append(f"not learned: teacher-forced token accuracy {checks['token_accuracy']:.2f} < "
                       f"{hp.min_token_accuracy:.2f} (greedy reproduces {checks['greedy_prefix']} of "
                       f"{checks['safe_tokens']} safe tokens)")
    elif not checks.get("greedy_matches_safe", True):
        how = "does not end" if not checks.get("greedy_ended", True) else "does not open like the safe response"
        reasons.append(f"not learned: the greedy answer {how} (token accuracy {checks['token_accuracy']:.2f}): "
                       f"{checks.get('greedy_answer', '')[:80]!r}")
    floor = min(checks["eot_logprob_before"], math.log(hp.eot_min_prob))
    if checks["eot_logprob_after"] < floor:
        reasons.append(f"end of turn lost: log p(end of turn | safe response) {checks['eot_logprob_before']:.2f} "
                       f"-> {checks['eot_logprob_after']:.2f} (< {floor:.2f})")
    if checks["kl_knowledge"] > hp.max_kl_knowledge:
        reasons.append(f"knowledge drift: KL on the knowledge answer {checks['kl_knowledge']:.3f} > "
                       f"{hp.max_kl_knowledge}")
    if checks["kl_harmless"] > hp.max_kl_harmless:
        reasons.append(f"harmless drift: KL on harmless prompts {checks['kl_harmless']:.3f} > {hp.max_kl_harmless}")
    if checks["loss_end"] > checks["loss_start"] + LOSS_TOLERANCE:
        reasons.append(f"loss rose: {checks['loss_start']:.3f} -> {checks['loss_end']:.3f}")
    return reasons


def too_far(reasons: list[str]) -> bool:
    """True when a reason says the step overshot (see :data:`TOO_FAR`)."""
    return any(r.startswith(TOO_FAR) for r in reasons)


def greedy_answer(model, tok, ref: Reference) -> dict:
    """The greedy answer to the edited input (the edit applied by the caller), at most the safe
    response's length + :data:`GREEDY_SLACK` tokens, compared with the safe response as *text* (the
    model may spell the same words with other token ids, which the teacher-forced ``greedy_prefix``
    counts as a departure). ``greedy_matches_safe``: the answer ended its turn and is the safe response,
    a prefix of it of at least :data:`MIN_GREEDY_TOKENS` tokens, or an answer that opens with the safe
    response's first sentence (seen: the edited model drops a middle sentence of the safe response)."""
    safe = ref.seqs[0]
    p_ids = safe.ids[: len(safe.ids) - len(safe.targets)]
    new, ended = greedy_ids(model, tok, p_ids, len(safe.targets) + GREEDY_SLACK, ref.prompt_format)
    text = " ".join(tok.decode(new, skip_special_tokens=True).split())
    target = " ".join(tok.decode(safe.targets, skip_special_tokens=True).split())
    long_enough = len(new) >= min(len(safe.targets) - 1, MIN_GREEDY_TOKENS)
    prefix = bool(text) and long_enough and target.startswith(text)
    return {"greedy_answer": text, "greedy_ended": ended,
            "greedy_matches_safe": bool(ended and (prefix or text.startswith(first_sentence(target))))}


def first_sentence(text: str) -> str:
    """``text`` up to and including its first sentence end (``.``, ``!`` or ``?`` followed by a space
    or the end); the whole text when it has none."""
    m = re.search(r"[.!?](?=\s|$)", text)
    return text[: m.end()] if m else text


def check(model, tok, ref: Reference, edit: Edit, hp: ValidationSettings) -> dict:
    """Apply ``edit`` to ``model`` (reverted afterwards, bit-exactly) and return
    ``{"status": "ok"|"failed", "reasons": [...], "checks": {...}}``."""
    with edit.applied_to(model):
        measured = measure(ref, _logprobs(model, ref.seqs, pad_id(tok)))
        # the greedy answer can only add a reason when the teacher-forced accuracy passes (judge_checks):
        # a try that already failed it is not decoded (a generation costs more than the forward pass)
        greedy = greedy_answer(model, tok, ref) if measured["token_accuracy"] >= hp.min_token_accuracy else {}
    checks = {**measured, **greedy}
    reasons = judge_checks(checks, hp)
    return {"status": "failed" if reasons else "ok", "reasons": reasons, "checks": checks}


def validate_edit(model, tok, case: EditCase, edit: Edit, hp, objective: tuple[float, float] = (1.0, 0.0),
                  ref: Reference | None = None) -> dict | None:
    """:func:`check` of one finished edit (``None`` when ``hp.validation`` is off). ``ref``: a reference
    computed earlier for this case (DINM reuses its own)."""
    if not getattr(hp, "validation", False):
        return None
    ref = ref or reference(model, tok, case, hp, objective)
    return check(model, tok, ref, edit, hp)
