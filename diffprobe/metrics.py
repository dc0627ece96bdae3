"""torchmetrics-based metrics binned by timestep (DDP-safe: states are summed across ranks)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class TimestepBinnedMean(Metric):
    """Mean of a per-sample value within each timestep bucket, accumulated over steps.

    ``update(values (B,), buckets (B,) long)``; ``compute()`` -> (num_buckets,), NaN where a bucket
    saw no sample. One ``index_add_`` per update, so it costs nothing next to a UNet step.
    """

    full_state_update = False

    def __init__(self, num_buckets: int):
        super().__init__()
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be positive, got {num_buckets}")
        self.num_buckets = num_buckets
        self.add_state("total", default=torch.zeros(num_buckets, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_buckets, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor, buckets: torch.Tensor) -> None:
        values = values.detach().to(torch.float64)
        self.total.index_add_(0, buckets, values)
        self.count.index_add_(0, buckets, torch.ones_like(values))

    def compute(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.total / self.count.clamp(min=1), torch.full_like(self.total, float("nan")))


class CellAccuracy(Metric):
    """Accuracy per (layer, timestep bucket, concept) cell, accumulated over steps.

    ``update(correct (L, B, K) bool, buckets (B,) long)``; ``compute()`` -> (L, buckets, K), NaN
    where a bucket saw no sample.
    """

    full_state_update = False

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.add_state("correct", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor, buckets: torch.Tensor) -> None:
        correct = correct.detach().to(torch.float64)
        self.correct.index_add_(1, buckets, correct)
        self.count.index_add_(1, buckets, torch.ones_like(correct))

    def compute(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.correct / self.count.clamp(min=1), torch.full_like(self.correct, float("nan")))
