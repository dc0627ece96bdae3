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
    total: torch.Tensor  # (num_buckets,) float64, a state (add_state)
    count: torch.Tensor  # (num_buckets,) float64, a state

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

    ``update(correct (L, B, K) bool, buckets (B,) long, used (B,) or None)``: only the samples
    ``used`` (weight 1) count; ``compute()`` -> (L, buckets, K), NaN where a bucket saw no sample.
    """

    full_state_update = False
    correct: torch.Tensor  # (L, buckets, K) float64, a state (add_state)
    count: torch.Tensor  # (L, buckets, K) float64, a state

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.add_state("correct", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor, buckets: torch.Tensor, used: torch.Tensor | None = None) -> None:
        weight = torch.ones_like(buckets, dtype=torch.float64) if used is None else used.detach().to(torch.float64)
        weight = weight.view(1, -1, 1)
        correct = correct.detach().to(torch.float64)
        self.correct.index_add_(1, buckets, correct * weight)
        self.count.index_add_(1, buckets, weight.expand_as(correct))

    def compute(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.correct / self.count.clamp(min=1), torch.full_like(self.correct, float("nan")))


def frequency_band_errors(prediction: torch.Tensor, target: torch.Tensor, cutoff: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample relative error in the low and the high radial frequency band.

    (B, C, H, W) x 2 -> (low, high), each (B,): ``|FFT(pred - target)|^2 / |FFT(target)|^2`` summed
    over frequencies below / above ``cutoff`` (fraction of the Nyquist radius). The mean (DC) term
    is left out of both, so the result does not depend on the pixel range's offset; the mean colour
    has its own measure (:func:`mean_colour_error`). "Semantic first, detail later" in numbers: at
    large t the low band of x0_hat is recovered while the high band is not.
    """
    height, width = target.shape[-2:]
    fy = torch.fft.fftfreq(height, device=target.device).view(-1, 1)
    fx = torch.fft.fftfreq(width, device=target.device).view(1, -1)
    radius = (fx.square() + fy.square()).sqrt() / 0.5  # 1.0 at the Nyquist frequency
    low = (radius <= cutoff) & (radius > 0)
    error = torch.fft.fft2((prediction - target).float()).abs().square()
    energy = torch.fft.fft2(target.float()).abs().square()

    def share(mask):
        return error[..., mask].sum(dim=(1, 2)) / energy[..., mask].sum(dim=(1, 2)).clamp_min(1e-8)

    return share(low), share(radius > cutoff)


def mean_colour_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute difference of the per-channel image means: (B, C, H, W) x 2 -> (B,)."""
    return (prediction.float().mean(dim=(2, 3)) - target.float().mean(dim=(2, 3))).abs().mean(1)
