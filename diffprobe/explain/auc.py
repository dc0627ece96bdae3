"""Insertion / deletion AUC ("area under cover"): RISE's causal metric on x_t.

Positions of x_t are sorted by a saliency map, highest first.
- insertion: start from a Gaussian-blurred x_t and copy in ``stride`` positions of x_t per state;
- deletion: start from x_t and set ``stride`` positions per state to 0.
Each state goes through the UNet (+ CFG) and the scheduler step; the result is scored against the
step's true x_{t-1}. Curves are averaged over inputs, min-max normalised, and integrated with the
trapezoid rule over a unit x range. With a distance score (``mse``) a faithful saliency gives a LOW
insertion AUC and a HIGH deletion AUC; with a similarity (``ssim``, ``cosine``) the reverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from diffprobe.choices import CausalMode, Score  # noqa: F401  (re-exported: the core's name for it)
from diffprobe.explain.model import ExplainModel
from diffprobe.explain.run import ExplainedStep, predict_prev
from diffprobe.explain.similarity import gaussian_blur, similarity_map

Mode = CausalMode
SCORES: tuple[str, ...] = ("mse", "ssim", "cosine")


def better_auc(mode: Mode, score: Score) -> str:
    """Which AUC a faithful saliency gets: 'lower' or 'higher'."""
    distance = score == "mse"
    return "lower" if (mode == "insertion") == distance else "higher"


def random_saliency(size: tuple[int, int], seed: int) -> torch.Tensor:
    """The baseline every method is compared against: uniform noise (h, w), a random order."""
    return torch.rand(size, generator=torch.Generator().manual_seed(seed))


def score_states(predicted: torch.Tensor, target: torch.Tensor, score: Score) -> torch.Tensor:
    """(B, C, h, w) predictions vs (1, C, h, w) target -> (B,) scores."""
    if score == "mse":
        return (predicted.float() - target.float()).pow(2).flatten(1).mean(1)
    if score == "ssim":
        return similarity_map(predicted, target, "ssim").flatten(1).mean(1)
    if score == "cosine":
        return F.cosine_similarity(predicted.float().flatten(1), target.float().flatten(1).expand(len(predicted), -1), dim=1)
    raise ValueError(f"unknown score {score!r}; choose one of {SCORES}")


@torch.no_grad()
def causal_curve(
    model: ExplainModel,
    step: ExplainedStep,
    saliency: torch.Tensor,
    *,
    mode: Mode = "insertion",
    score: Score = "mse",
    stride: int | None = None,
    batch_size: int = 32,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
) -> torch.Tensor:
    """Raw scores (K,) of the K = ceil(h w / stride) + 1 states, from 0 to all positions moved.
    ``stride`` defaults to h w / 32 (33 states)."""
    if mode not in ("insertion", "deletion"):
        raise ValueError(f"mode must be 'insertion' or 'deletion', got {mode!r}")
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {SCORES}")
    height, width = step.x_t.shape[-2:]
    if tuple(saliency.shape) != (height, width):
        raise ValueError(f"saliency is {tuple(saliency.shape)} but x_t is {height}x{width}; resize the map to x_t's resolution first")
    positions = height * width
    stride = math.ceil(positions / 32) if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    rank = torch.empty(positions, dtype=torch.long)
    rank[saliency.detach().flatten().float().cpu().argsort(descending=True)] = torch.arange(positions)
    counts = [min(k * stride, positions) for k in range(math.ceil(positions / stride) + 1)]
    x_t = step.x_t
    start = gaussian_blur(x_t.float(), blur_kernel, blur_sigma).to(x_t.dtype) if mode == "insertion" else torch.zeros_like(x_t)
    scores = []
    for first in range(0, len(counts), batch_size):
        chunk = torch.tensor(counts[first : first + batch_size])
        moved = (rank[None] < chunk[:, None]).view(-1, 1, height, width).to(device=x_t.device, dtype=x_t.dtype)  # (B, 1, h, w)
        states = start * moved + x_t * (1 - moved) if mode == "deletion" else x_t * moved + start * (1 - moved)
        scores.append(score_states(predict_prev(model, step, states), step.x_prev, score).cpu())
    return torch.cat(scores)


@dataclass
class AucSummary:
    """curve (K,): the input-averaged curve, min-max normalised; auc: its trapezoid area on [0, 1]."""

    curve: torch.Tensor
    auc: float


def normalised_auc(curves: torch.Tensor) -> AucSummary:
    """curves (N inputs, K states) -> averaged, min-max normalised curve and its area."""
    mean = curves.float().mean(0)
    curve = (mean - mean.min()) / (mean.max() - mean.min()).clamp_min(1e-12)
    x = torch.linspace(0, 1, len(curve))
    return AucSummary(curve=curve, auc=float(torch.trapezoid(curve, x)))
