"""Per-position similarity maps between predictions and a target (DF-RISE's scores).

SSIM's three terms with a Gaussian window (Wang et al. 2004), computed per position and averaged
over channels. ``structure`` follows the paper's reference code, (2 s_xy + C3) / (s_x s_y + C3)
(Wang et al.'s structure term has s_xy without the factor 2); ``ssim`` is the standard full SSIM.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch.nn import functional as F

from diffprobe.choices import Similarity  # noqa: F401  (re-exported: the core's name for it)

SIMILARITIES: tuple[str, ...] = get_args(Similarity)


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """(size, size) Gaussian kernel summing to 1."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the SSIM window must be a positive odd size, got {size}")
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    line = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = line[:, None] * line[None, :]
    return kernel / kernel.sum()


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(B, C, h, w) blurred per channel with a size x size Gaussian, replicate padding."""
    return _blur(x, gaussian_window(size, sigma))


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise Gaussian filter with replicate padding (works for maps smaller than the window)."""
    channels, pad = x.shape[1], kernel.shape[-1] // 2
    weight = kernel.to(x)[None, None].expand(channels, 1, -1, -1)
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), weight, groups=channels)


def similarity_map(
    prediction: torch.Tensor,
    target: torch.Tensor,
    kind: Similarity = "structure",
    *,
    window: int = 15,
    sigma: float = 1.5,
    data_range: float = 2.0,
) -> torch.Tensor:
    """prediction (B, C, h, w) vs target (1 or B, C, h, w) -> (B, h, w) float32 similarity."""
    if kind not in SIMILARITIES:
        raise ValueError(f"unknown similarity {kind!r}; choose one of {SIMILARITIES}")
    x, y = prediction.float(), target.float().expand_as(prediction)
    if kind == "cosine":
        return F.cosine_similarity(x, y, dim=1, eps=1e-8)
    kernel = gaussian_window(window, sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    c3 = c2 / 2
    mu_x, mu_y = _blur(x, kernel), _blur(y, kernel)
    var_x = (_blur(x * x, kernel) - mu_x**2).clamp_min(0)
    var_y = (_blur(y * y, kernel) - mu_y**2).clamp_min(0)
    cov = _blur(x * y, kernel) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    if kind == "luminance":
        score = luminance
    elif kind == "contrast":
        score = (2 * var_x.sqrt() * var_y.sqrt() + c2) / (var_x + var_y + c2)
    elif kind == "structure":
        score = (2 * cov + c3) / (var_x.sqrt() * var_y.sqrt() + c3)
    else:
        score = luminance * (2 * cov + c2) / (var_x + var_y + c2)
    return score.mean(dim=1)
