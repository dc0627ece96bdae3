"""Tensors -> pictures (no logger access here): image grids, PNG files and matplotlib figures.

Figures come from :func:`new_figure`: matplotlib ``Figure`` objects made without pyplot (no GUI
backend, no global list of open figures to leak) and laid out by constrained layout, which also
makes room for colour bars and super-titles that ``tight_layout`` warns about.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from einops import rearrange
from PIL import Image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from diffprobe.probes.pipeline import ProbeTable


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


def accuracy_heatmap(
    values: torch.Tensor,
    rows: list[str],
    timesteps: list[int],
    title: str,
    chance: torch.Tensor | float | None = None,
    significant: torch.Tensor | None = None,
):
    """A matplotlib Figure: rows x timesteps grid coloured by accuracy (0..1), each cell annotated.

    ``chance`` (scalar or one per row) is written in the row label; cells that are not significant
    are greyed out with a dot, so an above-chance colour is never mistaken for a result.
    """
    values = values.detach().cpu().float()
    labels = list(rows)
    if chance is not None:
        chance_row = torch.as_tensor(chance, dtype=torch.float32).expand(len(rows))
        labels = [f"{r} (chance {c:.2f})" for r, c in zip(rows, chance_row.tolist())]
    # Room for the row labels (about 0.06 inch a character) and the colour bar beside the cells:
    # with few timesteps a fixed width leaves the cells none, and matplotlib gives up on the layout.
    width = 1.3 + 0.06 * max(map(len, labels), default=0) + 0.55 * len(timesteps)
    figure, axes = new_figure(size=(max(width, 0.07 * len(title)), 0.9 + 0.42 * len(rows)), dpi=100)
    axis = axes[0, 0]
    image = axis.imshow(values.numpy(), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    axis.set_yticks(range(len(rows)), labels, fontsize=8)
    axis.set_xticks(range(len(timesteps)), [str(t) for t in timesteps], fontsize=7, rotation=90)
    axis.set_xlabel("timestep t (0 = clean)", fontsize=8)
    figure.suptitle(title, fontsize=9)  # centred on the figure: wider than the cells when they are few
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            dim = significant is not None and not bool(significant[i, j])
            value = float(values[i, j])
            text = "·" if dim else f"{value:.2f}"[1:] if value < 1 else "1"
            axis.text(j, i, text, ha="center", va="center", fontsize=6, color="white" if value < 0.6 else "black")
    figure.colorbar(image, ax=axis, fraction=0.03, pad=0.02, label="test accuracy")
    return figure


def probe_heatmaps(
    table: ProbeTable, note: str, by: Sequence[Literal["concept", "layer"]] = ("concept", "layer")
) -> Iterator[tuple[str, str, Figure]]:
    """The accuracy heatmaps of a probe table, one at a time, as ``(by, name, figure)``: per concept
    (layers x timesteps) and / or per layer (concepts x timesteps), titled
    ``"<name>: probe accuracy (<note>)"``, with chance levels and significance as
    :func:`accuracy_heatmap` shows them."""
    if "concept" in by:
        for k, concept in enumerate(table.concepts):
            title = f"{concept}: probe accuracy ({note})"
            figure = accuracy_heatmap(
                table.accuracy[:, :, k], table.layers, table.timesteps, title, float(table.chance[k]), table.significant[:, :, k]
            )
            yield "concept", concept, figure
    if "layer" in by:
        for i, layer in enumerate(table.layers):
            title = f"{layer}: probe accuracy ({note})"
            figure = accuracy_heatmap(table.accuracy[i].T, table.concepts, table.timesteps, title, table.chance, table.significant[i].T)
            yield "layer", layer, figure


def decodability_curves(best_accuracy: torch.Tensor, chance: torch.Tensor, timesteps: list[int], concepts: list[str], title: str):
    """A matplotlib Figure: for each concept, the best layer's probe accuracy over t, as the share
    of the way from chance (0) to perfect (1). best_accuracy: (T, K); chance: (K,)."""
    above = ((best_accuracy - chance) / (1 - chance).clamp_min(1e-6)).clamp(min=-0.1)
    figure, axes = new_figure(size=(6.4, 3.6), dpi=110)
    axis = axes[0, 0]
    positions = list(range(len(timesteps)))
    for k, concept in enumerate(concepts):
        axis.plot(positions, above[:, k].numpy(), marker="o", markersize=3, label=concept)
    axis.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    axis.text(positions[-1], 0.02, "chance", ha="right", va="bottom", fontsize=7, color="grey")
    axis.set_xticks(positions, [str(t) for t in timesteps], fontsize=7, rotation=90)
    axis.set_xlabel("timestep t of the noised input (0 = clean)", fontsize=8)
    axis.set_ylabel("(accuracy - chance) / (1 - chance)", fontsize=8)
    axis.set_ylim(-0.1, 1.02)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, frameon=False)
    return figure


def metric_curves(curves: dict[str, list[float]], timesteps: list[int], title: str):
    """A matplotlib Figure with one small panel per metric, each a curve over t."""
    names = list(curves)
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    figure, axes = new_figure(rows, columns, size=(3.0 * columns, 2.3 * rows), dpi=90)
    for axis, name in zip(axes.flat, names):
        axis.plot(timesteps, curves[name], marker="o", markersize=3)
        axis.set_title(name, fontsize=8)
        axis.set_xlabel("t", fontsize=7)
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
    from matplotlib import colormaps

    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = new_figure(rows, columns, size=(4.0 * columns, 2.9 * rows), dpi=90)
    for axis, (name, lines) in zip(axes.flat, panels.items()):
        # tab10 repeats after 10 lines (13 caption words would share colours): tab20 beyond that.
        colours = colormaps["tab10" if len(lines) <= 10 else "tab20"].colors
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


def grouped_bars(values: dict[str, list[float]], labels: list[str], title: str, ylabel: str):
    """A Figure of bars: one group per label, one bar per key of ``values`` (e.g. a schedule)."""
    figure, axes = new_figure(size=(max(4.0, 0.45 * len(labels) * max(1, len(values)) ** 0.5), 2.9), dpi=90)
    axis = axes[0, 0]
    width = 0.8 / max(1, len(values))
    for offset, (name, heights) in enumerate(values.items()):
        axis.bar(np.arange(len(labels)) + offset * width - 0.4 + width / 2, heights, width, label=name)
    axis.set_xticks(np.arange(len(labels)), labels, fontsize=7, rotation=45, ha="right")
    axis.set_ylabel(ylabel, fontsize=8)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, frameon=False)
    return figure


def image_panels(images: dict[str, torch.Tensor], title: str, columns: int = 6):
    """A Figure of (3, H, W) images in [-1, 1], each titled with its key (e.g. a layer name)."""
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    figure, axes = new_figure(rows, columns, size=(1.9 * columns, 2.1 * rows), dpi=90)
    for axis, (name, image) in zip(axes.flat, images.items()):
        axis.imshow(to_unit(image.detach().cpu()).permute(1, 2, 0).numpy(), interpolation="nearest")
        axis.set_title(name, fontsize=5.5)
    for axis in axes.flat:
        axis.axis("off")
    figure.suptitle(title, fontsize=8)
    return figure
