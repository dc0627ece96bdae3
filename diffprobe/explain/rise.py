"""DF-RISE (R1): which positions of x_t the step needs to reproduce its own x_{t-1}.

N random binary masks M_i on x_t (kept with probability p, the same mask on every channel), the
UNet + scheduler step on every masked x_t, a per-position similarity S_i of each prediction to the
true x_{t-1}, saliency = sum_i M_i S_i. Many masks go through one UNet call (``batch_size``), so
memory stays bounded and 500 masks take a few calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from diffprobe.explain.model import ExplainModel
from diffprobe.explain.run import ExplainedStep, predict_prev
from diffprobe.explain.similarity import SIMILARITIES, Similarity, similarity_map


@dataclass
class RiseResult:
    """saliency (h, w): sum_i M_i S_i (the paper's un-normalised sum), at x_t's resolution."""

    saliency: torch.Tensor
    num_masks: int
    keep_probability: float
    similarity: str


def random_masks(num_masks: int, size: tuple[int, int], keep_probability: float, generator: torch.Generator, grid: int | None = None) -> torch.Tensor:
    """(N, 1, h, w) float masks. ``grid=None``: each position kept independently. ``grid=s``: RISE's
    masks (Petsiuk et al. 2018): an s x s binary grid, bilinearly upsampled to a cell larger than
    the map and randomly shifted, giving smooth blobs in [0, 1]."""
    height, width = size
    if grid is None:
        return (torch.rand(num_masks, 1, height, width, generator=generator) < keep_probability).float()
    cell = (-(-height // grid), -(-width // grid))
    coarse = (torch.rand(num_masks, 1, grid, grid, generator=generator) < keep_probability).float()
    up = F.interpolate(coarse, size=((grid + 1) * cell[0], (grid + 1) * cell[1]), mode="bilinear", align_corners=False)
    shifts = torch.stack([torch.randint(0, cell[0], (num_masks,), generator=generator), torch.randint(0, cell[1], (num_masks,), generator=generator)], 1)
    return torch.stack([up[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(shifts.tolist())])


@torch.no_grad()
def df_rise(
    model: ExplainModel,
    step: ExplainedStep,
    *,
    num_masks: int = 500,
    keep_probability: float = 0.5,
    similarity: Similarity = "structure",
    grid: int | None = None,
    batch_size: int = 64,
    window: int = 15,
    sigma: float = 1.5,
    data_range: float = 2.0,
    seed: int = 0,
    progress: bool = False,
) -> RiseResult:
    """DF-RISE saliency of ``step``. ``batch_size`` masked copies per UNet call (doubled under CFG)."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; choose one of {SIMILARITIES}")
    if not 0 < keep_probability < 1:
        raise ValueError(f"keep_probability must be in (0, 1), got {keep_probability}")
    if num_masks < 1 or batch_size < 1:
        raise ValueError(f"num_masks and batch_size must be positive, got {num_masks} and {batch_size}")
    height, width = step.x_t.shape[-2:]
    masks = random_masks(num_masks, (height, width), keep_probability, torch.Generator().manual_seed(seed), grid)
    saliency = torch.zeros(height, width)
    for start in tqdm(range(0, num_masks, batch_size), desc="DF-RISE", unit="batch", disable=not progress):
        batch = masks[start : start + batch_size].to(device=model.device, dtype=step.x_t.dtype)
        predicted = predict_prev(model, step, step.x_t * batch)
        scores = similarity_map(predicted, step.x_prev, similarity, window=window, sigma=sigma, data_range=data_range)
        saliency += (batch[:, 0].float() * scores).sum(0).cpu()
    return RiseResult(saliency=saliency, num_masks=num_masks, keep_probability=keep_probability, similarity=similarity)
