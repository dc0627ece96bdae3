"""A process-wide stop request: set by a signal handler, honoured by long loops between UNet calls.

A cluster scheduler (or ``timeout``) sends SIGTERM and waits a short grace period before SIGKILL.
Training finishes its step and checkpoints (``callbacks.RunSafety``); an observation that is
running at that moment (300 probe images x 15 t, a 100-step sample grid) must not hold the
process for minutes, so the core loops call :func:`check` between UNet batches and give up with
:class:`Interrupted`. No Lightning here: the core works on a bare UNet.
"""

from __future__ import annotations

import signal

_requested: int | None = None  # the signal number that asked us to stop


class Interrupted(RuntimeError):
    """A loop gave up because a stop was requested; its partial result is discarded."""


def request_stop(signum: int = signal.SIGTERM) -> None:
    global _requested
    _requested = int(signum)


def stop_requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _requested


def clear() -> None:
    global _requested
    _requested = None


def check() -> None:
    """Raise :class:`Interrupted` when a stop was requested (call it between UNet batches)."""
    if _requested is not None:
        raise Interrupted(f"stopped by {signal.Signals(_requested).name}")
