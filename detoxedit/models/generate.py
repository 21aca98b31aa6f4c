"""Prompt formatting and batched generation.

Three rules the reference implementation breaks and we keep (the README compares the two; ``docs/dinm.md``
has the details):

* the prompt is formatted with the tokenizer's chat template when it has one (``prompt_format="chat"``);
  ``"raw"`` feeds the bare text, as the reference does;
* decoding settings are explicit and recorded (greedy unless ``do_sample`` is set, with a seed);
* a response is the generated *token ids* after the prompt, cut at the first end-of-turn id and decoded
  only then, never a character offset into decoded text.

Inputs longer than ``max_length - max_new_tokens`` are truncated from the *left* of the user's text, so
the harmful question, which usually sits at the end of an attack prompt, survives and the chat
template's header is kept intact.

``generate`` sorts prompts by token length and decodes them in sub-batches. Two hooks into that loop:
``on_batch`` sees each sub-batch's responses as soon as they exist (the response cache stores them, so a
killed run keeps them), and ``groups`` names a group per prompt (a case, in the runner's batched edited
phase): while a sub-batch is decoded, :func:`current_row_groups` says which group every batch row belongs
to, which is how :mod:`detoxedit.models.rowedits` gives each row its own case's edit.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import torch

from detoxedit.models.memory import batch_limit, is_out_of_memory, lower_batch_limit, release_memory

log = logging.getLogger(__name__)

PromptFormat = Literal["chat", "raw"]


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings. Every field is recorded with the responses it produced."""

    max_new_tokens: int = 600
    """Paper: 600 new tokens (300 for short-context models such as GPT-2-XL)."""
    do_sample: bool = False
    """Greedy decoding by default; sampling only on request, then with ``seed``."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    """Seed for sampling; set once per ``generate`` call."""
    prompt_format: PromptFormat = "chat"
    """``chat``: the tokenizer's chat template; ``raw``: the bare text (reference behaviour)."""
    system_prompt: str | None = None
    """System message for chat formatting; None keeps the template's own default."""
    max_length: int | None = None
    """Context budget (prompt + response); None: the model's ``max_position_embeddings`` (at most 8192)."""
    batch_size: int = 8

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def with_suffix(text: str, suffix: str | None) -> str:
    """Append a suffix system prompt to an input; the reference joins them with one space."""
    return f"{text} {suffix}" if suffix else text


def _has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def resolve_format(tok, prompt_format: PromptFormat) -> PromptFormat:
    """``chat`` falls back to ``raw`` for tokenizers without a chat template (GPT-2, base models)."""
    if prompt_format not in ("chat", "raw"):
        raise ValueError(f"prompt_format must be 'chat' or 'raw', not {prompt_format!r}")
    return "chat" if prompt_format == "chat" and _has_chat_template(tok) else "raw"


def _messages(user_text: str, system_prompt: str | None) -> list[dict]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return msgs + [{"role": "user", "content": user_text}]


def _as_id_list(out) -> list[int]:
    # apply_chat_template returns a list, or a BatchEncoding/dict in newer transformers.
    if hasattr(out, "keys") and "input_ids" in out.keys():
        out = out["input_ids"]
    return list(out)


def prompt_ids(tok, user_text: str, prompt_format: PromptFormat = "chat",
               system_prompt: str | None = None) -> list[int]:
    """Token ids of a full prompt, ready for the assistant's answer to follow."""
    fmt = resolve_format(tok, prompt_format)
    if fmt == "chat":
        return _as_id_list(tok.apply_chat_template(
            _messages(user_text, system_prompt), tokenize=True, add_generation_prompt=True))
    return list(tok(user_text, add_special_tokens=True)["input_ids"])


def end_of_turn_text(tok, prompt_format: PromptFormat = "chat") -> str:
    """The text the chat template writes right after an assistant message (e.g. ``<|im_end|>``).

    Found by rendering a conversation with a sentinel answer; trailing whitespace is dropped. For raw
    prompts it is the tokenizer's EOS token.
    """
    if resolve_format(tok, prompt_format) == "raw":
        return tok.eos_token or ""
    sentinel = "\u2063SENTINEL\u2063"
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}], tokenize=False)
    tail = rendered.split(sentinel, 1)[1]
    return tail.rstrip() or (tok.eos_token or "")


def stop_token_ids(tok, prompt_format: PromptFormat = "chat") -> list[int]:
    """Ids that end a response: the tokenizer's EOS and the chat template's end-of-turn token."""
    ids = []
    if tok.eos_token_id is not None:
        ids.append(int(tok.eos_token_id))
    eot = end_of_turn_text(tok, prompt_format)
    if eot:
        eot_ids = tok(eot, add_special_tokens=False)["input_ids"]
        if len(eot_ids) == 1:
            ids.append(int(eot_ids[0]))
    return sorted(set(ids))


def response_ids(tok, response: str, prompt_format: PromptFormat = "chat") -> list[int]:
    """Token ids of an assistant response as a training target, ending with the end-of-turn token.

    The response is tokenized on its own and appended to the prompt ids (token-level concatenation),
    so no string boundary can merge the last prompt token with the first response token.
    """
    ids = list(tok(response, add_special_tokens=False)["input_ids"])
    eot = end_of_turn_text(tok, prompt_format)
    if eot:
        ids += list(tok(eot, add_special_tokens=False)["input_ids"])
    return ids


def context_budget(model, settings: GenerationSettings) -> int:
    """Tokens available to prompt + response."""
    if settings.max_length is not None:
        return int(settings.max_length)
    return int(min(getattr(model.config, "max_position_embeddings", 2048) or 2048, 8192))


def truncate_left(tok, user_text: str, budget: int, prompt_format: PromptFormat = "chat",
                  system_prompt: str | None = None) -> list[int]:
    """Prompt ids of at most ``budget`` tokens, cutting the *start* of the user's text if needed."""
    if budget <= 0:
        raise ValueError(f"no room for the prompt: budget {budget} tokens")
    ids = prompt_ids(tok, user_text, prompt_format, system_prompt)
    text = user_text
    for _ in range(4):  # re-tokenising after a cut can shift a token or two; converge in a few rounds
        excess = len(ids) - budget
        if excess <= 0:
            return ids
        content = tok(text, add_special_tokens=False)["input_ids"]
        if excess >= len(content):
            raise ValueError(
                f"the prompt template alone needs {len(ids) - len(content)} tokens, over the budget {budget}")
        text = tok.decode(content[excess:], skip_special_tokens=True)
        ids = prompt_ids(tok, text, prompt_format, system_prompt)
    return ids[-budget:]


def _pad_left(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def pad_id(tok) -> int:
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    if tok.eos_token_id is not None:
        return int(tok.eos_token_id)
    return 0


def cut_response(tokens: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """Generated ids up to (not including) the first stop id."""
    stops = set(int(s) for s in stop_ids)
    out = []
    for t in tokens:
        if int(t) in stops:
            break
        out.append(int(t))
    return out


class RowGroups:
    """The group id of every row of the batch being decoded (see :func:`current_row_groups`)."""

    def __init__(self, ids: Sequence[int]):
        self.ids = tuple(int(g) for g in ids)
        self._rows: dict = {}

    def rows(self, group: int, device) -> torch.Tensor | None:
        """Batch-row indices of ``group`` (a long tensor on ``device``), or None when it has no row here."""
        key = (group, str(device))
        if key not in self._rows:
            idx = [r for r, g in enumerate(self.ids) if g == group]
            self._rows[key] = torch.tensor(idx, dtype=torch.long, device=device) if idx else None
        return self._rows[key]


_ROW_GROUPS: contextvars.ContextVar[RowGroups | None] = contextvars.ContextVar("detoxedit_row_groups",
                                                                               default=None)


@contextlib.contextmanager
def row_groups(ids: Sequence[int]) -> Iterator[RowGroups]:
    """Inside: :func:`current_row_groups` says that batch row r belongs to group ``ids[r]``. ``generate``
    sets it for each sub-batch; a caller running its own forward pass on a batch sets it the same way."""
    token = _ROW_GROUPS.set(RowGroups(ids))
    try:
        yield _ROW_GROUPS.get()
    finally:
        _ROW_GROUPS.reset(token)


def current_row_groups() -> RowGroups | None:
    """While ``generate(..., groups=...)`` decodes a sub-batch: the group of each of its rows, in batch-row
    order (the order ``model.generate`` sees, after length sorting and left padding); else None. Forward
    hooks read it at every forward call (prefill and each cached decoding step: greedy decoding never
    reorders or drops rows, so row r stays the same prompt throughout)."""
    return _ROW_GROUPS.get()


@torch.no_grad()
def generate(model, tok, prompts: Sequence[str], settings: GenerationSettings = GenerationSettings(),
             progress: bool = False, *, groups: Sequence[int] | None = None,
             on_batch: Callable[[list[int], list[str]], None] | None = None) -> list[str]:
    """Responses of ``model`` to each user prompt, in order.

    Prompts are sorted by length and decoded in left-padded batches of ``settings.batch_size``; the
    response of each row is the token ids after its prompt, cut at the first stop id. A batch that runs
    out of memory is retried at half the size, and that size is kept for the model from then on
    (:mod:`detoxedit.models.memory`): its rows and every later batch are decoded as a run at the smaller
    size decodes them (the same sub-batches when the sizes are powers of two); one row that still fails
    re-raises.

    ``groups``: one group id per prompt; while each sub-batch is decoded, :func:`current_row_groups`
    gives its rows' groups (for :func:`detoxedit.models.rowedits.row_edits`). ``on_batch(positions,
    responses)``: called after each sub-batch with the prompts' positions in ``prompts`` and their
    responses (``ResponseCache.prefetch`` stores them as they come).
    """
    from transformers import GenerationConfig

    if not prompts:
        return []
    if groups is not None and len(groups) != len(prompts):
        raise ValueError(f"{len(groups)} group ids for {len(prompts)} prompts")
    budget = context_budget(model, settings) - settings.max_new_tokens
    encoded = [truncate_left(tok, p, budget, settings.prompt_format, settings.system_prompt)
               for p in prompts]
    stops = stop_token_ids(tok, settings.prompt_format)
    pid = pad_id(tok)
    gen_cfg = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        temperature=settings.temperature if settings.do_sample else None,
        top_p=settings.top_p if settings.do_sample else None,
        top_k=None,
        pad_token_id=pid,
        eos_token_id=stops or None,
        bos_token_id=tok.bos_token_id,
    )
    if settings.do_sample and settings.seed is not None:
        torch.manual_seed(settings.seed)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    results: list[str | None] = [None] * len(prompts)
    size = batch_limit(model, settings.batch_size)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(order), desc="generate", unit="prompt")
    at = 0
    try:
        while at < len(order):
            idx = order[at:at + size]
            new = _decode_or_free(model, [encoded[i] for i in idx], pid, device, gen_cfg,
                                  [groups[i] for i in idx] if groups is not None else None, settings.do_sample)
            if new is None:  # out of memory: half the size, below the rows that failed (a short last batch)
                size = max(1, min(size // 2, 1 << ((len(idx) - 1).bit_length() - 1)))
                lower_batch_limit(model, size)
                log.warning("out of memory generating %d rows; retrying them %d at a time, and at most %d rows "
                            "per batch for the rest of the run", len(idx), size, size)
                continue
            for row, i in enumerate(idx):
                results[i] = tok.decode(cut_response(new[row], stops), skip_special_tokens=True).strip()
            if on_batch is not None:
                on_batch(list(idx), [results[i] for i in idx])
            at += len(idx)
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return [r if r is not None else "" for r in results]


def _decode(model, rows: list[list[int]], pid: int, device, gen_cfg, groups: list[int] | None) -> list[list[int]]:
    """Greedy (or sampled) continuations of one left-padded sub-batch: the new token ids of each row."""
    ids, mask = _pad_left(rows, pid)
    with row_groups(groups) if groups is not None else contextlib.nullcontext():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg)
    return out[:, ids.shape[1]:].tolist()


def _decode_or_free(model, rows, pid, device, gen_cfg, groups, sampling: bool) -> list[list[int]] | None:
    """:func:`_decode`, or None when the sub-batch ran out of memory and has rows to split: its memory is
    freed and (sampling) the random state put back, so a retry starts from the same state. Any other error,
    and an out-of-memory error of a single row, is raised."""
    rng = _rng_state(device) if sampling else None
    try:
        return _decode(model, rows, pid, device, gen_cfg, groups)
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err) or len(rows) == 1:
            raise
        log.info("out of memory: %s", str(err).splitlines()[0] if str(err) else type(err).__name__)
    release_memory(device)  # after the except block, whose traceback held the failed batch's tensors
    if rng is not None:
        _set_rng_state(device, rng)
    return None


def _rng_state(device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device, state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
