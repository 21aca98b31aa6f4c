"""Small hook utilities: capture what modules see and return during one forward pass.

Kept deliberately tiny: a context manager that registers hooks and always removes them, so a failing
forward pass can never leave a hook behind on the user's model.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn


def first_tensor(output) -> torch.Tensor:
    """A block returns a tensor in newer transformers and a tuple (hidden, ...) in older ones."""
    return output[0] if isinstance(output, (tuple, list)) else output


@contextlib.contextmanager
def hooks(handles_factory: Callable[[], Sequence[torch.utils.hooks.RemovableHandle]]) -> Iterator[None]:
    handles = handles_factory()
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture_outputs(modules: Sequence[nn.Module]) -> Iterator[list]:
    """Collect ``first_tensor(output)`` of each module (in order) during the forward passes inside."""
    store: list = [None] * len(modules)

    def make(i):
        def hook(_mod, _inp, out):
            store[i] = first_tensor(out).detach()
        return hook

    with hooks(lambda: [m.register_forward_hook(make(i)) for i, m in enumerate(modules)]):
        yield store


@contextlib.contextmanager
def capture_calls(modules: Sequence[nn.Module]) -> Iterator[list]:
    """Collect the positional and keyword arguments each module was called with: ``[(args, kwargs)]``.

    Used to replay decoder blocks above an edited layer with the exact attention masks and position
    embeddings the model computed for this input.
    """
    store: list = [None] * len(modules)

    def make(i):
        def hook(_mod, args, kwargs):
            store[i] = (args, dict(kwargs))
        return hook

    with hooks(lambda: [m.register_forward_pre_hook(make(i), with_kwargs=True)
                        for i, m in enumerate(modules)]):
        yield store


@contextlib.contextmanager
def replace_output(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Make ``module`` return ``fn(its input)`` instead of its own output."""
    def hook(_mod, inp, _out):
        return fn(inp[0])

    with hooks(lambda: [module.register_forward_hook(hook)]):
        yield


@contextlib.contextmanager
def capture_inputs(modules: Sequence[nn.Module]) -> Iterator[list]:
    """Collect the first positional input of each module during the forward passes inside."""
    store: list = [None] * len(modules)

    def make(i):
        def hook(_mod, inp):
            store[i] = inp[0].detach()
        return hook

    with hooks(lambda: [m.register_forward_pre_hook(make(i)) for i, m in enumerate(modules)]):
        yield store
