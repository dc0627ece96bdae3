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

# torch has no public way to call one module compiled in place (``nn.Module.compile``) eagerly:
# ``torch.compiler.set_stance("force_eager")`` is process-wide and would also run the observers'
# own compiled UNet (training.compiled.ObservationUNet) eagerly. ``nn.Module.compile`` keeps the
# compiled call in the private ``_compiled_call_impl`` (torch 2.2 to 2.13.0, the version this was
# written against); tests/core/test_capture.py compiles a module for real and fails loudly if that changes.
COMPILED_CALL = "_compiled_call_impl"


@contextmanager
def eager(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` runs its eager forward (hooks included) inside, its compiled one again after."""
    compiled = getattr(module, COMPILED_CALL, None)
    setattr(module, COMPILED_CALL, None)
    try:
        yield module
    finally:
        setattr(module, COMPILED_CALL, compiled)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
