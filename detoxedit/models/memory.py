"""How many rows to generate at once, from the memory that is free, and what to do when it runs out.

``bench`` generates prompts in batches of ``--batch-size`` rows and, with ``--batch-cases K``, evaluates
K cases' edits together. Left unset, both are chosen here once per run, after the model is loaded
(:func:`choose_batching`), and the choice is logged with its reason::

    batch size 16 (auto: 3.1 GiB free on cpu, ~25 MiB per row, 42 rows fit in half of it with a 1.5x
    margin, at most 16 on cpu); batch cases 1 (auto: as many cases as rows in a batch, at most 1 on cpu ...)

**Free memory.** GPU: ``torch.cuda.mem_get_info`` of the model's device plus what torch's caching
allocator holds unused. CPU: ``psutil.virtual_memory().available`` when psutil is installed, else
``MemAvailable`` from ``/proc/meminfo``, and never more than a cgroup's limit minus its usage.

**One row** (one prompt being decoded; :func:`row_bytes`), for T = prompt + new tokens:

* the KV cache: ``2 (K and V) x layers x kv_heads x head_dim x dtype bytes x T``;
* the activations of one block at its widest, during the prefill: ``T x (4 x hidden + 3 x intermediate)
  x dtype bytes`` (hidden states, q/k/v/o; gate, up and their product in the MLP);
* eager attention only (half precision on CPU): the score matrix of one block,
  ``heads x T^2 x (4 + dtype bytes)`` (scores in the model's dtype, softmax in fp32); SDPA does not
  materialise it;
* the logits of the last position, ``vocab x 4 x 2`` (fp32, and the processed copy).

**One case of a group** (``--batch-cases``; :func:`case_bytes`):

* its edit's delta (fp32) and the edited copy of the matrix that
  :func:`detoxedit.models.rowedits.row_edits` holds (model dtype), for up to :data:`EDITED_MATRICES` MLP
  down-projections (DINM and FT-L edit one, MEND the last three blocks);
* its share of the group's training: ``DINM.edit_many`` trains the group's cases in one batch, which
  keeps, for backward, the activations of every block above the edited one for every token of every
  case's sequences: at most ``layers x (T + TRAIN_EXTRA_TOKENS) x (16 x hidden + 4 x intermediate) x
  dtype bytes`` (the edit at block 0; the sequences are the prompt and safe response, about a row's T,
  plus the knowledge pair and the harmless locality rows).

**The rule.** A budget of :data:`BUDGET_FRACTION` of the free memory (the rest is headroom for the edit's
own optimisation, the judge, the allocator and other processes); ``batch_size`` is the largest power of
two with ``SAFETY x row x batch_size`` inside it, at most :data:`MAX_ROWS` for the device; ``batch_cases``
is as many cases as a batch has rows (their five inputs each then fill whole batches), at most
:data:`MAX_CASES` for the device (1 on CPU), the number of cases to run, and what the budget left after
the rows holds. Powers of two keep the choice stable between runs on one machine (the response cache
keys on the batch size) and let :func:`generate <detoxedit.models.generate.generate>` halve a batch on
out-of-memory (below) into the same sub-batches a run at the smaller size makes.

**Out of memory anyway** (:func:`is_out_of_memory`): ``generate`` frees what it can
(:func:`release_memory`), halves the batch, retries the same rows, and keeps the smaller size for the
rest of the run (on the model, :func:`batch_limit`); a single row that still fails re-raises.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

GiB = 2 ** 30

BUDGET_FRACTION = 0.5
"""Share of the free memory that generation rows and a group's edits may take."""
SAFETY = 1.5
"""Factor on the per-row estimate (allocator rounding, temporaries the estimate leaves out)."""
MAX_ROWS = {"cpu": 16, "cuda": 128}
"""Most rows per batch. CPU: decoding 32 built-in prompts (about 100 tokens each) x 32 new tokens on the
135M default, one thread, took 3.43 / 1.59 / 1.16 / 0.83 / 0.84 s per prompt at 1 / 4 / 8 / 16 / 32 rows
in fp32, and 2.08 / 1.24 / 1.05 / 0.68 / 0.78 s in bf16 (``benchmarks/README.md``): a decoding step
reads every weight once whatever the rows, until the rows' arithmetic takes longer than that read, here
past about 16 rows; more rows then only add padding. The crossing is about ``bytes per weight x FLOP/s /
(2 x memory bandwidth)`` rows, the same for any model size on one machine. GPU: about 170 rows on an
H200 (2 bytes x ~800 bf16 TFLOP/s / (2 x 4.8 TB/s)), so rows are nearly free up to the cap, unless
memory or the prompts of one call run out first."""
MAX_CASES = {"cpu": 1, "cuda": 32}
"""Most cases per group. CPU: 1 (the case-by-case path) until ``benchmarks/batched.py`` shows the
batched path pays there: a CPU case spends most of its time in its own edit (33 of 56 s in the demo),
which grouping does not share, and a group's records are written only when the whole group is done.
GPU: generation dominates and is nearly free per row, so grouping pays; 32 bounds what a killed run
redoes."""
EDITED_MATRICES = 3
"""MLP down-projections one case's edit may change (MEND's default: the last three blocks)."""
TRAIN_EXTRA_TOKENS = 512
"""Tokens of a DINM edit's sequences besides the prompt and safe response: the knowledge pair and eight
harmless prompts with 16-token continuations (``harmless_kl``)."""
_DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


# --- what is free -----------------------------------------------------------------------------------

def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """A container's memory limit minus its usage (cgroup v2, else v1); None when there is no limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2 ** 60:  # v1 writes "no limit" as a huge number
            return None
        return max(int(limit) - usage, 0)
    return None


def cpu_free_bytes() -> int | None:
    """Memory a new allocation can take without swapping: psutil's ``available`` when psutil is
    installed, else ``MemAvailable`` of /proc/meminfo; capped by a cgroup's headroom. None if unknown."""
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except ImportError:
        free = _meminfo_available()
    headroom = _cgroup_headroom()
    if headroom is not None:
        free = headroom if free is None else min(free, headroom)
    return free


def gpu_free_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device, counting what torch's caching allocator reserved but does not use."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def model_devices(model) -> list[torch.device]:
    """The devices holding the model's parameters (several under ``device_map``)."""
    return sorted({p.device for p in model.parameters()}, key=str)


def free_bytes(model) -> tuple[int | None, str]:
    """``(free bytes, where)`` for the device the model generates on. A model spread over several GPUs:
    the smallest free memory of them times their number (each holds its share of the KV cache)."""
    cuda = [d for d in model_devices(model) if d.type == "cuda"]
    if cuda:
        free = [gpu_free_bytes(d) for d in cuda]
        where = str(cuda[0]) if len(cuda) == 1 else f"{len(cuda)} GPUs"
        return min(free) * len(free), where
    return cpu_free_bytes(), "cpu"


# --- what one row and one case cost -------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder that decide what generating one row costs (from its config)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config) -> "Shape":
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        hidden = int(cfg.hidden_size)
        heads = int(cfg.num_attention_heads)
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or hidden // heads
        intermediate = (getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None)
                        or 4 * hidden)  # GPT-2 and GPT-J leave n_inner unset for 4 x hidden
        return cls(layers=int(cfg.num_hidden_layers), hidden=hidden, intermediate=int(intermediate),
                   heads=heads, kv_heads=int(kv_heads), head_dim=int(head_dim), vocab=int(cfg.vocab_size))


def dtype_bytes(dtype: torch.dtype) -> int:
    return _DTYPE_BYTES.get(dtype, torch.tensor([], dtype=dtype).element_size())


def row_bytes(shape: Shape, tokens: int, nbytes: int, eager_attention: bool = False) -> int:
    """Estimated peak bytes of one row decoding ``tokens`` positions (prompt + new); see the module
    docstring. No safety factor."""
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * nbytes * tokens
    activations = tokens * (4 * shape.hidden + 3 * shape.intermediate) * nbytes
    scores = shape.heads * tokens * tokens * (4 + nbytes) if eager_attention else 0
    logits = shape.vocab * 4 * 2
    return kv + activations + scores + logits


def case_bytes(shape: Shape, nbytes: int, tokens: int) -> int:
    """Bytes one case of a group holds (module docstring): :data:`EDITED_MATRICES` down-projection deltas
    (fp32) and their edited copies (model dtype), and the activations its share of a stacked edit keeps
    for backward, for sequences of ``tokens + TRAIN_EXTRA_TOKENS`` tokens through every block."""
    edits = EDITED_MATRICES * shape.hidden * shape.intermediate * (4 + nbytes)
    per_token_block = (16 * shape.hidden + 4 * shape.intermediate) * nbytes
    return edits + shape.layers * (tokens + TRAIN_EXTRA_TOKENS) * per_token_block


def _pow2_floor(n: float) -> int:
    return 1 if n < 2 else 2 ** int(math.floor(math.log2(n)))


# --- the choice ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Batching:
    """The batch size and cases per group of a run, and why."""

    batch_size: int
    batch_cases: int
    size_reason: str
    cases_reason: str

    def describe(self) -> str:
        return (f"batch size {self.batch_size} ({self.size_reason}); "
                f"batch cases {self.batch_cases} ({self.cases_reason})")


def _size(n: float) -> str:
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / 2 ** 20:.0f} MiB" if n >= 10 * 2 ** 20 else f"{n / 2 ** 20:.1f} MiB"


def decide(free: int | None, where: str, row: int, case: int, batch_size: int | None = None,
           batch_cases: int | None = None, cases: int | None = None) -> Batching:
    """The rule of the module docstring on plain numbers: ``free`` bytes on ``where`` ("cpu", "cuda:0",
    ...), ``row`` and ``case`` bytes (without the safety factor), the user's values (None: choose), and
    the number of cases to run. Unknown free memory: the device's caps."""
    kind = "cpu" if where == "cpu" else "cuda"
    budget = None if free is None else BUDGET_FRACTION * free
    if batch_size is not None:
        size, size_reason = int(batch_size), "set"
    elif budget is None:
        size, size_reason = MAX_ROWS[kind], f"auto: free memory unknown, at most {MAX_ROWS[kind]} on {kind}"
    else:
        fits = budget / (SAFETY * row)
        size = _pow2_floor(min(MAX_ROWS[kind], fits))
        size_reason = (f"auto: {_size(free)} free on {where}, ~{_size(row)} per row, {int(fits)} rows fit "
                       f"in half of it with a {SAFETY}x margin, at most {MAX_ROWS[kind]} on {kind}")
    if batch_cases is not None:
        return Batching(size, int(batch_cases), size_reason, "set")
    limit = min(size, MAX_CASES[kind], cases or MAX_CASES[kind])
    why = f"auto: as many cases as rows in a batch, at most {MAX_CASES[kind]} on {kind}" + (
        f" and the {cases} to run" if cases else "")
    if budget is None:
        return Batching(size, max(1, limit), size_reason, why)
    fits_cases = int((budget - SAFETY * row * size) // case) if case > 0 else limit
    return Batching(size, max(1, min(limit, fits_cases)), size_reason,
                    f"{why}; ~{_size(case)} per case, {max(fits_cases, 0)} fit beside the rows")


def longest_row_tokens(model, tok, prompts: Sequence[str], max_new_tokens: int, prompt_format: str = "chat") -> int:
    """Positions of the longest row ``generate`` will decode for ``prompts``: the longest prompt's tokens
    plus the chat template's own (one tokenizer call on the bare texts, not a template per prompt),
    within the context budget, plus ``max_new_tokens``."""
    from detoxedit.models.generate import GenerationSettings, context_budget, prompt_ids

    template = len(prompt_ids(tok, "", prompt_format))
    longest = max((len(ids) for ids in tok(list(prompts), add_special_tokens=False)["input_ids"]), default=0)
    budget = context_budget(model, GenerationSettings(max_new_tokens=max_new_tokens)) - max_new_tokens
    return min(longest + template, budget) + max_new_tokens


def choose_batching(model, batch_size: int | None, batch_cases: int | None, *, tokens: int,
                    cases: int | None = None) -> Batching:
    """The run's batch size and cases per group (module docstring): the user's values where given, else
    chosen from the free memory on the model's device and its config, for rows of ``tokens`` positions
    (the longest prompt + new tokens)."""
    if batch_size is not None and batch_cases is not None:
        return Batching(int(batch_size), int(batch_cases), "set", "set")
    shape = Shape.of(model.config)
    param = next(model.parameters())
    nbytes = dtype_bytes(param.dtype)
    eager = getattr(model.config, "_attn_implementation", None) == "eager"
    free, where = free_bytes(model)
    return decide(free, where, row_bytes(shape, tokens, nbytes, eager), case_bytes(shape, nbytes, tokens),
                  batch_size, batch_cases, cases)


# --- out of memory --------------------------------------------------------------------------------------

_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure: ``torch.OutOfMemoryError`` (CUDA's), Python's
    ``MemoryError``, or a RuntimeError that says so (CPU: "DefaultCPUAllocator: can't allocate memory";
    MPS: "MPS backend out of memory")."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if isinstance(err, MemoryError) or (oom is not None and isinstance(err, oom)):
        return True
    return isinstance(err, RuntimeError) and any(t in str(err).lower() for t in _OOM_TEXT)


def release_memory(device: torch.device | str | None = None) -> None:
    """Give back what a failed batch left: Python's garbage, and torch's cached GPU blocks."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


_LIMIT_ATTR = "detoxedit_batch_limit"


def batch_limit(model, batch_size: int) -> int:
    """``batch_size``, or less once generation on ``model`` ran out of memory (:func:`lower_batch_limit`)."""
    limit = getattr(model, _LIMIT_ATTR, None)
    return batch_size if limit is None else max(1, min(batch_size, int(limit)))


def lower_batch_limit(model, size: int) -> None:
    """Keep at most ``size`` rows per batch on ``model`` from now on (the rest of the run)."""
    setattr(model, _LIMIT_ATTR, int(size))
