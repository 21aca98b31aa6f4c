"""Hyper-parameters of MEND (Mitchell et al., ICLR 2022, "Fast Model Editing at Scale"). No logic
beyond reading and checking.

Names follow MEND's own configuration where one exists (``rank``, ``n_hidden``, ``lr``, ``edit_lr``,
``lr_lr``, ``cedit``/``cloc`` -> ``c_edit``/``c_loc``, ``grad_clip``); the formatting fields
(``prompt_format``, ``suffix_system_prompt``, ``max_length``, ``max_output_length``) mean what they
mean for DINM, because MEND's editing loss is built with the same batch builder
(``detoxedit.methods.machinery.build_batch``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from detoxedit.methods._hparams import Dim, FormatSettings, ValidationSettings

# Keys of the reference's YAML files that describe its plumbing, not the method.
_IGNORED_KEYS = {
    "alg_name", "model_name", "model_class", "tokenizer_class", "tokenizer_name", "device", "batch_size",
    "archive", "results_dir", "model_parallel", "fp16", "inner_params",
}
_ALIASES = {"cedit": "c_edit", "cloc": "c_loc"}


@dataclass
class MENDHyperParams(FormatSettings, ValidationSettings):
    """Settings of MEND: the editor network, its training on a split, and one edit.

    Defaults are MEND's published settings where it has them (rank 1920, one hidden layer,
    lr 1e-6 for the editor, edit_lr 1e-4 and lr_lr 1e-4 for the per-layer step, c_edit 0.1,
    grad clip 100); ``configs/mend/`` holds the settings tuned for a small model on a CPU.
    """

    METHOD: ClassVar[str] = "MEND"
    YAML_SECTIONS: ClassVar[tuple[str, ...]] = ("hparams", "mend")
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset(_IGNORED_KEYS)
    SEARCH_SPACE: ClassVar[tuple[Dim, ...]] = (
        Dim("edit_lr", "float", 1e-5, 1e-3, log=True),
        Dim("lr", "float", 1e-6, 1e-3, log=True),
        Dim("c_edit", "float", 0.03, 1.0, log=True),
        Dim("c_loc", "float", 0.1, 10.0, log=True),
        Dim("rank", "choice", choices=(64, 256, 1920)),
    )
    """``detoxedit tune``'s search space: the editor's initial edit step, its training rate, the loss
    weights (Eq. 5-6) and the rank of its low-rank layers."""

    layers: list[int] = field(default_factory=list)
    """Blocks whose MLP down-projection is edited. Empty: the last 3 blocks (MEND edits the last
    layers). Negative indices count from the end (-1 = the last block)."""
    rank: int = 1920
    """Rank of each low-rank layer ``U V`` of the editor network g (paper Sec. 3.1)."""
    n_hidden: int = 1
    """Hidden layers of g; g has ``n_hidden + 1`` residual low-rank layers (paper Eq. 3: two)."""
    lr: float = 1e-6
    """Adam learning rate of g's parameters."""
    edit_lr: float = 1e-4
    """Initial value of every per-layer step alpha_l in ``W~ = W - alpha_l * sum_t d~_t u~_t^T`` (Eq. 4)."""
    lr_lr: float = 1e-4
    """Adam learning rate of the per-layer steps alpha_l."""
    c_edit: float = 0.1
    """Weight of the post-edit editing loss in ``L = c_edit * L_e + c_loc * L_loc`` (paper Eq. 5-6)."""
    c_loc: float = 1.0
    """Weight of the locality loss (KL between pre- and post-edit outputs on the knowledge pair)."""
    epochs: int = 1
    """Passes over the training cases (one case per step)."""
    max_steps: int | None = None
    """Stop training after this many steps (None: ``epochs`` x number of cases)."""
    grad_clip: float = 100.0
    """Clip the global gradient norm of the editor's parameters at this value (MEND: 100)."""
    seed: int = 0
    """Seed of g's initialisation and of the order of the training cases."""

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        raw = {_ALIASES.get(k, k): v for k, v in raw.items()}
        if "layers" in raw and raw["layers"] is None:
            raw["layers"] = []
        return raw

    def validate(self, source: str = "MEND settings") -> None:
        self.as_numbers(source, "lr", "edit_lr", "lr_lr", "c_edit", "c_loc", "grad_clip")
        if not isinstance(self.layers, list) or not all(isinstance(i, int) for i in self.layers):
            self.fail(source, f"layers must be a list of block indices ([] = the last 3 blocks), got {self.layers!r}")
        if len(set(self.layers)) != len(self.layers):
            self.fail(source, f"layers lists a block twice: {self.layers!r}")
        if not isinstance(self.rank, int) or self.rank < 1:
            self.fail(source, f"rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.n_hidden, int) or self.n_hidden < 0:
            self.fail(source, f"n_hidden must be an integer >= 0, got {self.n_hidden!r}")
        if self.lr <= 0 or self.lr_lr < 0:
            self.fail(source, "lr must be > 0 and lr_lr >= 0")
        if self.c_edit < 0 or self.c_loc < 0:
            self.fail(source, "c_edit and c_loc must be >= 0")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            self.fail(source, f"epochs must be an integer >= 1, got {self.epochs!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            self.fail(source, f"max_steps must be null or an integer >= 1, got {self.max_steps!r}")
        if self.grad_clip <= 0:
            self.fail(source, "grad_clip must be > 0")
        if self.max_length < 16:
            self.fail(source, "max_length must be at least 16 tokens")
        self.check_format(source)
        self.check_validation(source)
