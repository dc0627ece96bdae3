"""Memorisation: does a sample copy a training image? The criterion of Carlini et al. (2023,
"Extracting training data from diffusion models"): a sample is memorised when its nearest training
image is closer than ``ratio`` (a third) of the distance to the second nearest, in pixel space (L2)."""

from __future__ import annotations

import torch

from diffprobe import interrupt


@torch.no_grad()
def nearest_two(samples: torch.Tensor, train: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(N, 2): each sample's L2 distance to its nearest and second-nearest training image.
    samples (N, C, H, W), train (M, C, H, W) with M >= 2."""
    if train.shape[0] < 2:
        raise ValueError(f"memorisation needs at least 2 training images to compare with, got {train.shape[0]}")
    flat_train = train.flatten(1).float()
    out = []
    for start in range(0, samples.shape[0], chunk):
        interrupt.check()
        distances = torch.cdist(samples[start : start + chunk].flatten(1).float(), flat_train)
        out.append(distances.topk(2, dim=1, largest=False).values)
    return torch.cat(out)


def memorised(samples: torch.Tensor, train: torch.Tensor, ratio: float = 1 / 3) -> torch.Tensor:
    """(N,) bool: which samples are memorised copies of a training image."""
    two = nearest_two(samples, train)
    return two[:, 0] < ratio * two[:, 1]
