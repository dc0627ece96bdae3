"""Run a module differently for a while, and put it back as it was.

- :func:`eager`: a module compiled in place (``module.compile()``) runs eagerly. Forward hooks
  that stash tensors outside the graph do not fire reliably under torch.compile, so observation
  (probes, recorders, export copies) runs the eager module; training keeps the compiled one.
- :func:`eval_mode`: a module in eval mode (dropout off), then back in the train / eval mode it
  had, so observing or sampling in the middle of training never leaves it in the wrong mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eager(module: nn.Module) -> Iterator[nn.Module]:
    compiled = getattr(module, "_compiled_call_impl", None)
    module._compiled_call_impl = None
    try:
        yield module
    finally:
        module._compiled_call_impl = compiled


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
