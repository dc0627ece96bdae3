"""Run a module compiled in place (``module.compile()``) eagerly for a while.

Forward hooks that stash tensors outside the graph do not fire reliably under torch.compile, so
observation (probes, recorders, export copies) runs the eager module; training keeps the compiled one.
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
