"""Stop a training on a non-finite loss before the optimizer spreads it into the weights, without
a host sync every step: a flag accumulates on the device and is read every N steps and before
every checkpoint."""

from __future__ import annotations

import torch


class NonFiniteGuard:
    def __init__(self):
        self._seen = torch.zeros((), dtype=torch.bool)

    def update(self, loss: torch.Tensor) -> None:
        """Remember, on the loss's device, whether this loss was NaN or infinite (no sync)."""
        self._seen = self._seen.to(loss.device) | ~torch.isfinite(loss.detach())

    def raise_if_seen(self, what: str, trainer=None) -> None:
        """Raise when a non-finite loss was seen; with a trainer, on every rank when any rank saw one
        (or the others would hang in the next all-reduce)."""
        bad = bool(self._seen.item())
        if trainer is not None:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise FloatingPointError(
                f"{what}; training stopped before any checkpoint of these weights was written, so the checkpoints on disk are the "
                "last good ones. Lower --model.learning_rate, set --trainer.gradient_clip_val, or check the data for NaNs."
            )
