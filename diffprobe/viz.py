"""Tensors -> pictures (no logger access here): image grids and PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return (images.float() / 2 + 0.5).clamp(0, 1)


def image_grid(images: torch.Tensor, columns: int | None = None, padding: int = 1) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> one (3, rows*(H+p)+p, cols*(W+p)+p) image in [0, 1].

    Missing cells at the end are left black; grayscale is repeated to RGB.
    """
    images = to_unit(images.detach().cpu())
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    n = images.shape[0]
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    filler = torch.zeros(rows * columns - n, *images.shape[1:])
    cells = torch.nn.functional.pad(torch.cat([images, filler]), (padding, 0, padding, 0))
    grid = rearrange(cells, "(r c) ch h w -> ch (r h) (c w)", r=rows, c=columns)
    return torch.nn.functional.pad(grid, (0, padding, 0, padding))


def save_png(image: torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    """(3, H, W) in [0, 1] -> PNG (nearest-neighbour upscaled by ``scale``)."""
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(array)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
