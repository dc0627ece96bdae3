"""Tensors -> pictures (no logger access here): image grids, PNG files and matplotlib figures.

Figures come from :func:`new_figure`: matplotlib ``Figure`` objects made without pyplot (no GUI
backend, no global list of open figures to leak) and laid out by constrained layout, which also
makes room for colour bars and super-titles that ``tight_layout`` warns about.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from einops import rearrange
from PIL import Image

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def new_figure(rows: int = 1, columns: int = 1, *, size: tuple[float, float], dpi: int) -> tuple[Figure, np.ndarray]:
    """A Figure of ``size`` inches with a (rows, columns) array of axes (always 2-D). It renders
    with Agg when saved (``savefig``) or logged (``SummaryWriter.add_figure``)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=dpi, layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False)


def metric_curves(curves: dict[str, list[float]], timesteps: list[int], title: str):
    """A matplotlib Figure with one small panel per metric, each a curve over t."""
    names = list(curves)
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    figure, axes = new_figure(rows, columns, size=(3.0 * columns, 2.3 * rows), dpi=90)
    for axis, name in zip(axes.flat, names):
        axis.plot(timesteps, curves[name], marker="o", markersize=3)
        axis.set_title(name, fontsize=8)
        axis.set_xlabel("timestep t (0 = clean)", fontsize=7)
        axis.set_ylabel(name, fontsize=7)
        axis.tick_params(labelsize=6)
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    return figure


def heat_overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.55) -> torch.Tensor:
    """A (h, w) map, min-max normalised, upsampled to the (C, H, W) image in [-1, 1], coloured with
    matplotlib's ``jet`` and blended over the image. Returns (3, H, W) in [-1, 1]."""
    from matplotlib import colormaps

    heat = heat.detach().float().cpu()
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-8)
    size = image.shape[-2:]
    heat = torch.nn.functional.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    coloured = torch.from_numpy(colormaps["jet"](heat.numpy())[..., :3]).permute(2, 0, 1).float()
    base = to_unit(image.detach().cpu())
    base = base.repeat(3, 1, 1) if base.shape[0] == 1 else base
    return ((1 - alpha) * base + alpha * coloured) * 2 - 1


def line_panels(panels: dict[str, dict[str, tuple[list, list]]], title: str, xlabel: str, ylabel: str, invert_x: bool = False):
    """A Figure with one panel per key of ``panels``, a line (x, y) per inner key (legend)."""
    from matplotlib import color_sequences

    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = new_figure(rows, columns, size=(4.0 * columns, 2.9 * rows), dpi=90)
    for axis, (name, lines) in zip(axes.flat, panels.items()):
        # tab10 repeats after 10 lines (13 caption words would share colours): tab20 beyond that.
        colours = color_sequences["tab10" if len(lines) <= 10 else "tab20"]  # the colormaps' colours
        for index, (label, (x, y)) in enumerate(lines.items()):
            axis.plot(x, y, marker="o", markersize=2.5, linewidth=1.2, label=label, color=colours[index % len(colours)])
        if invert_x:
            axis.invert_xaxis()  # timesteps run from noisy (large t) to clean
        axis.set_title(name, fontsize=8)
        axis.set_xlabel(xlabel, fontsize=7)
        axis.set_ylabel(ylabel, fontsize=7)
        axis.tick_params(labelsize=6)
        axis.legend(fontsize=5.5, frameon=False, ncol=2)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    return figure


def grouped_bars(values: dict[str, list[float]], labels: list[str], title: str, ylabel: str, xlabel: str):
    """A Figure of bars: one group per label, one bar per key of ``values`` (e.g. a schedule)."""
    figure, axes = new_figure(size=(max(4.0, 0.45 * len(labels) * max(1, len(values)) ** 0.5), 2.9), dpi=90)
    axis = axes[0, 0]
    width = 0.8 / max(1, len(values))
    for offset, (name, heights) in enumerate(values.items()):
        axis.bar(np.arange(len(labels)) + offset * width - 0.4 + width / 2, heights, width, label=name)
    axis.set_xticks(np.arange(len(labels)), labels, fontsize=7, rotation=45, ha="right")
    axis.set_ylabel(ylabel, fontsize=8)
    axis.set_xlabel(xlabel, fontsize=8)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, frameon=False)
    return figure


def image_panels(images: dict[str, torch.Tensor], title: str, columns: int = 6, heat_label: str | None = None):
    """A Figure of (3, H, W) images in [-1, 1], each titled with its key (e.g. a layer name).
    ``heat_label``: the images are :func:`heat_overlay` maps; a colour bar says what colour means."""
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    figure, axes = new_figure(rows, columns, size=(2.0 * columns + (0.8 if heat_label else 0), 2.1 * rows + 0.3), dpi=100)
    for axis, (name, image) in zip(axes.flat, images.items()):
        axis.imshow(to_unit(image.detach().cpu()).permute(1, 2, 0).numpy(), interpolation="nearest")
        axis.set_title(name, fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in list(axes.flat)[len(images) :]:
        axis.axis("off")
    if heat_label:
        _heat_colorbar(figure, axes, heat_label)
    figure.suptitle(title, fontsize=9)
    return figure


def _heat_colorbar(figure, axes, label: str) -> None:
    from matplotlib import cm, colormaps
    from matplotlib.colors import Normalize

    mappable = cm.ScalarMappable(Normalize(0, 1), colormaps["jet"])
    bar = figure.colorbar(mappable, ax=axes, fraction=0.05, pad=0.02, ticks=[0, 0.5, 1])
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def saliency_figure(views: dict[str, tuple[torch.Tensor, torch.Tensor]], title: str, label: str = "saliency (min-max: 0 least, 1 most)"):
    """One panel per view name -> (image (C, H, W) in [-1, 1], map (h, w)): the map in ``jet``
    over the image (the paper's presentation), with a colour bar, at a size a reader can see."""
    figure, axes = new_figure(1, len(views), size=(3.0 * len(views) + 0.9, 3.4), dpi=110)
    for axis, (name, (image, heat)) in zip(axes.flat, views.items()):
        axis.imshow(to_unit(heat_overlay(image, heat)).permute(1, 2, 0).numpy(), interpolation="nearest")
        axis.set_title(name, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    _heat_colorbar(figure, axes, label)
    figure.suptitle(title, fontsize=10)
    return figure


def _labelled_grid(cells: torch.Tensor, row_labels: list[str], column_labels: list[str], title: str, cell_inches: float = 1.3):
    """A Figure of one image grid (rows x columns cells, (R*C, C, H, W) in [-1, 1]) in ONE axes,
    its rows and columns named by tick labels: one axes, not one per cell, draws in a fraction of
    the time (the observers log many of these during training)."""
    rows, columns = len(row_labels), len(column_labels)
    grid = image_grid(cells, columns=columns)  # (3, rows * (H + 1) + 1, columns * (W + 1) + 1) in [0, 1]
    cell_h, cell_w = cells.shape[-2] + 1, cells.shape[-1] + 1
    longest = max(map(len, row_labels), default=0)
    figure, axes = new_figure(size=(cell_inches * columns + 0.08 * longest + 1.6, cell_inches * rows + 0.8), dpi=100)
    figure.set_layout_engine("compressed")  # fits the picture's equal aspect without clipping the row labels
    axis = axes[0, 0]
    axis.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    axis.set_xticks([cell_w * (c + 0.5) for c in range(columns)], column_labels, fontsize=8)
    axis.set_yticks([cell_h * (r + 0.5) for r in range(rows)], row_labels, fontsize=8)
    axis.xaxis.tick_top()
    axis.tick_params(length=0)
    figure.suptitle(title, fontsize=9)
    return figure, axis, (cell_h, cell_w)


def image_rows(rows: dict[str, torch.Tensor], column_labels: list[str], title: str):
    """A Figure of images (N, C, H, W) in [-1, 1]: one labelled row per key, labelled columns."""
    cells = torch.cat([images[: len(column_labels)].detach().cpu().float() for images in rows.values()])
    figure, axis, _ = _labelled_grid(cells, list(rows), column_labels, title)
    axis.set_ylabel("", fontsize=8)
    return figure


def attention_grid(images: torch.Tensor, maps: dict[str, torch.Tensor], object_points, background_points, title: str):
    """One column per image; the first row the images, then one labelled row per attention map
    (e.g. "object query (+), t = 50"), each map over its image. Landscape, so it stays large in a
    TensorBoard card. images (N, C, H, W) in [-1, 1]; maps (N, h, w) each; points (N, 2) as (x, y)
    in [0, 1], marked on every panel (+ object query, x background query)."""
    count = len(images)
    rows = {"image": [image.detach().cpu().float().expand(3, -1, -1) for image in images]}
    rows |= {name: [heat_overlay(image, heat[i]) for i, image in enumerate(images)] for name, heat in maps.items()}
    cells = torch.stack([cell for row in rows.values() for cell in row])
    figure, axis, (cell_h, cell_w) = _labelled_grid(cells, list(rows), [f"image {i + 1}" for i in range(count)], title, cell_inches=1.1)
    size = images.shape[-1]
    for points, marker in ((object_points, "+"), (background_points, "x")):
        xy = [(cell_w * c + 1 + x * size - 0.5, cell_h * r + 1 + y * size - 0.5) for r in range(len(rows)) for c, (x, y) in enumerate(points[:count].tolist())]
        axis.scatter(*zip(*xy), marker=marker, s=25, color="white", linewidths=1.2)
    _heat_colorbar(figure, np.array([[axis]]), "attention (min-max per map)")
    return figure
