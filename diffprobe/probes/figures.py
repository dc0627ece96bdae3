"""Probe results as figures: heatmaps of one evaluation, and decodability by timestep over training.

Colour and height always mean the share of the way from chance to perfect,
``(accuracy - chance) / (1 - chance)``: 0 is what a constant answer gets on the test split, 1 is
perfect. A concept at chance then looks like nothing, not "moderate". Cells and points that are not
significantly above chance (Bonferroni over the table) are marked as such.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffprobe.choices import HeatmapView
from diffprobe.report.viz import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from diffprobe.probes.baselines import Learned
    from diffprobe.probes.table import ProbeTable

NOT_SIGNIFICANT = "· = not significantly above chance (binomial test, Bonferroni over the table)"
NOT_LEARNED = "· = not significantly above both baselines (exact McNemar test, Bonferroni over the table)"


def above_chance(accuracy: torch.Tensor, chance: torch.Tensor | float) -> torch.Tensor:
    """(accuracy - chance) / (1 - chance): 0 = chance, 1 = perfect (chance broadcasts)."""
    chance = torch.as_tensor(chance, dtype=torch.float32)
    return (accuracy.float() - chance) / (1 - chance).clamp_min(1e-6)


def accuracy_heatmap(
    accuracy: torch.Tensor,
    rows: list[str],
    timesteps: list[int],
    title: str,
    chance: torch.Tensor | float,
    significant: torch.Tensor | None = None,
    row_label: str = "layer",
    scale: tuple[str, str, str] = ("chance", "perfect", "accuracy above chance"),
) -> Figure:
    """rows x timesteps cells coloured from chance (0) to perfect (1), each with its accuracy in
    two digits; the row labels give chance (one value, or one per row)."""
    accuracy = accuracy.detach().cpu().float()
    chance_row = torch.as_tensor(chance, dtype=torch.float32).expand(len(rows))
    if torch.as_tensor(chance).numel() == 1:  # one chance level for the table: said once, in the title
        labels = list(rows)
        title = f"{title}; chance {float(chance_row[0]):.2f}" if scale[0] == "chance" else title
    else:
        labels = [f"{row} (chance {c:.2f})" for row, c in zip(rows, chance_row.tolist())]
    colour = above_chance(accuracy, chance_row[:, None]).clamp(0, 1)
    # Room for the row labels (about 0.07 inch a character) and the colour bar beside the cells.
    width = 1.6 + 0.07 * max(map(len, labels), default=0) + 0.5 * len(timesteps)
    figure, axes = new_figure(size=(max(width, 0.08 * len(title), 5.0), 1.3 + 0.36 * len(rows)), dpi=100)
    axis = axes[0, 0]
    image = axis.imshow(colour.numpy(), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    axis.set_yticks(range(len(rows)), labels, fontsize=9)
    axis.set_xticks(range(len(timesteps)), [str(t) for t in timesteps], fontsize=8, rotation=90)
    axis.set_xlabel("timestep t of the noised input (0 = clean)", fontsize=9)
    axis.set_ylabel(row_label, fontsize=9)
    figure.suptitle(title, fontsize=10)
    for i in range(accuracy.shape[0]):
        for j in range(accuracy.shape[1]):
            dim = significant is not None and not bool(significant[i, j])
            value = float(accuracy[i, j])
            text = "·" if dim else ("1" if value >= 0.995 else f"{value:.2f}".replace("0.", ".", 1))  # -0.05 -> -.05
            axis.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if float(colour[i, j]) < 0.6 else "black")
    bar = figure.colorbar(image, ax=axis, fraction=0.04, pad=0.02, ticks=[0, 0.5, 1])
    bar.ax.set_yticklabels([scale[0], "", scale[1]], fontsize=8)
    bar.set_label(scale[2], fontsize=8)
    if significant is not None:
        figure.supxlabel(f"cells: {'test accuracy' if scale[0] == 'chance' else scale[2]}; {NOT_SIGNIFICANT if scale[0] == 'chance' else NOT_LEARNED}", fontsize=7)
    return figure


def probe_heatmaps(
    table: ProbeTable, note: str, by: Sequence[HeatmapView] = ("concept", "layer")
) -> Iterator[tuple[HeatmapView, str, Figure]]:
    """The heatmaps of a probe table, one at a time, as ``(by, name, figure)``: per concept (layers
    x timesteps) and / or per layer (concepts x timesteps), titled ``"<name>: probe accuracy (<note>)"``."""
    if "concept" in by:
        for k, concept in enumerate(table.concepts):
            title = f"{concept}: probe accuracy ({note})"
            yield (
                "concept",
                concept,
                accuracy_heatmap(
                    table.accuracy[:, :, k], table.layers, table.timesteps, title, table.chance[k], table.significant[:, :, k]
                ),
            )
    if "layer" in by:
        for i, layer in enumerate(table.layers):
            title = f"{layer}: probe accuracy ({note})"
            yield (
                "layer",
                layer,
                accuracy_heatmap(table.accuracy[i].T, table.concepts, table.timesteps, title, table.chance, table.significant[i].T, "concept"),
            )


def gain_heatmaps(learned: Learned, note: str) -> Iterator[tuple[str, Figure]]:
    """Per concept, layers x timesteps: the gain of each probe over the better of its two baselines
    (input, init), as ``(concept, figure)``; cells not significantly above both are marked."""
    table = learned.table
    for k, concept in enumerate(table.concepts):
        title = f"{concept}: learned, gain over the better baseline ({note})"
        scale = ("0", "+1", "accuracy minus the better baseline")
        yield concept, accuracy_heatmap(learned.gain[:, :, k], table.layers, table.timesteps, title, 0.0, learned.learned[:, :, k], scale=scale)


def _chance_axis(axis, timesteps: list[int], small: bool = False) -> None:
    """t on x (every other label when ``small`` and there are many), chance and perfect on y."""
    positions = list(range(len(timesteps)))
    axis.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)
    step = 2 if small and len(timesteps) > 8 else 1
    axis.set_xticks(positions[::step], [str(t) for t in timesteps][::step], fontsize=8, rotation=90)
    axis.set_xlabel("timestep t (0 = clean)" if small else "timestep t of the noised input (0 = clean)", fontsize=9 if small else 8)
    axis.set_ylim(-0.1, 1.05)
    axis.set_yticks([0, 0.5, 1], ["chance", "0.5", "perfect"], fontsize=8 if small else 7)


def _markers(axis, positions, values, decodable, learned, colour, size: float) -> None:
    """Filled where learned (above both baselines), hollow where only decodable (above chance)."""
    only_decodable = decodable & ~learned
    axis.scatter(positions[learned], values[learned], s=size, color=colour, zorder=3)
    axis.scatter(positions[only_decodable], values[only_decodable], s=size, facecolors="white", edgecolors=colour, zorder=3)


def decodability_curves(
    best: torch.Tensor, significant: torch.Tensor, timesteps: list[int], concepts: list[str], title: str,
    baseline: torch.Tensor | None = None, learned: torch.Tensor | None = None,
) -> Figure:  # fmt: skip
    """Per concept, the best layer's accuracy above chance (T, K) over t, with the better baseline
    (T, K) dashed in the same colour. Markers: filled where the gain over both baselines is
    significant at some layer (learned), hollow where the probe is only above chance (decodable),
    none where neither. Without baselines, filled = decodable."""
    figure, axes = new_figure(size=(8.2, 3.8), dpi=110)
    axis = axes[0, 0]
    positions = np.arange(len(timesteps))
    learned = significant if learned is None else learned
    for k, concept in enumerate(concepts):
        values = best[:, k].clamp(min=-0.1).numpy()
        (line,) = axis.plot(positions, values, linewidth=1.3, label=concept)
        if baseline is not None:
            axis.plot(positions, baseline[:, k].clamp(min=-0.1).numpy(), linewidth=1.0, linestyle="--", color=line.get_color(), alpha=0.8)
        _markers(axis, positions, values, significant[:, k].numpy().astype(bool), learned[:, k].numpy().astype(bool), line.get_color(), 18)
    _chance_axis(axis, timesteps)
    axis.set_ylabel("best layer's accuracy above chance", fontsize=8)
    axis.set_title(title, fontsize=9)
    legend = "filled: learned\n(above both baselines)\nhollow: decodable only\ndashed: better baseline" if baseline is not None else "filled: significant\nat some layer"
    # Beside the axes, not over them: the curves fill the whole height.
    axis.legend(fontsize=7, frameon=False, title=legend, title_fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), alignment="left")
    return figure


def decodability_over_training(
    best: Mapping[int, torch.Tensor], significant: Mapping[int, torch.Tensor], timesteps: list[int], concepts: list[str], title: str,
    baseline: Mapping[int, torch.Tensor] | None = None, learned: Mapping[int, torch.Tensor] | None = None,
) -> Figure:  # fmt: skip
    """Small multiples, one panel per concept: the best layer's accuracy above chance over t, one
    line per training step (light = early, dark = late); markers as :func:`decodability_curves`
    (filled: learned, hollow: decodable only); grey dashed: the newest step's better baseline."""
    from matplotlib import colormaps

    steps = sorted(best)
    columns = min(3, len(concepts))
    rows = -(-len(concepts) // columns)
    # Small panels, large text: TensorBoard shows the figure at a card's width.
    figure, axes = new_figure(rows, columns, size=(2.9 * columns, 2.3 * rows + 0.4), dpi=100)
    colours = colormaps["viridis_r"](np.linspace(0.15, 1.0, len(steps)))
    positions = np.arange(len(timesteps))
    for k, (axis, concept) in enumerate(zip(axes.flat, concepts)):
        for colour, step in zip(colours, steps):
            values = best[step][:, k].clamp(min=-0.1).numpy()
            decodable = significant[step][:, k].numpy().astype(bool)
            hit = decodable if learned is None else learned[step][:, k].numpy().astype(bool)
            axis.plot(positions, values, color=colour, linewidth=1.4, label=f"step {step}")
            _markers(axis, positions, values, decodable, hit, colour, 12)
        if baseline is not None:
            axis.plot(positions, baseline[steps[-1]][:, k].clamp(min=-0.1).numpy(), color="grey", linestyle="--", linewidth=1.0, label="baseline")
        _chance_axis(axis, timesteps, small=True)
        axis.set_ylabel("above chance", fontsize=9)
        axis.set_title(concept, fontsize=11)
    for axis in list(axes.flat)[len(concepts) :]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7, frameon=False, loc="upper right")
    figure.suptitle(title, fontsize=11)
    return figure


def largest_t_over_training(
    max_t: Mapping[int, Sequence[int | None]], concepts: list[str], title: str, num_train_timesteps: int, ylabel: str = "largest decodable t"
) -> Figure:
    """One labelled line per concept: the largest t with a significant result (decodable, or
    learned) at each training step (a concept at no t sits on the "none" line below 0)."""
    steps = sorted(max_t)
    figure, axes = new_figure(size=(6.4, 3.4), dpi=100)
    axis = axes[0, 0]
    none = -0.06 * num_train_timesteps
    for k, concept in enumerate(concepts):
        values = [none if max_t[step][k] is None else max_t[step][k] for step in steps]
        axis.plot(steps, values, marker="o", markersize=4, linewidth=1.4, label=concept)
    axis.axhline(none, color="grey", linestyle=":", linewidth=0.8)
    axis.set_ylim(1.5 * none, num_train_timesteps)
    axis.set_yticks(
        [none, 0, num_train_timesteps // 2, num_train_timesteps - 1],
        ["none", "0", str(num_train_timesteps // 2), str(num_train_timesteps - 1)],
        fontsize=7,
    )
    axis.set_xlabel("training step", fontsize=8)
    axis.set_ylabel(ylabel, fontsize=8)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, frameon=False, ncol=2)
    return figure
