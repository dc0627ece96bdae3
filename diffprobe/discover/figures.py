"""``probe.py discover``'s figures: the best AUROC per concept over training (beside the input's
dictionary), and a gallery of features with their top-activating images and where they fire."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from matplotlib.figure import Figure

from diffprobe.discover.score import FOUND_AUROC
from diffprobe.report.viz import new_figure


def best_auroc_over_training(summary: Mapping[str, Mapping], input_auroc: Mapping[str, float], title: str) -> Figure:
    """Per concept, over training steps: the mean over its values of the best feature's AUROC (over
    layers and t); dashed, the same on the dictionaries of the noisy input x_t."""
    figure, axes = new_figure(size=(6.8, 3.6), dpi=110)
    axis = axes[0, 0]
    colours = [f"C{i}" for i in range(10)]
    for i, (concept, entry) in enumerate(summary.items()):
        steps = sorted(entry["best_auroc"], key=int)
        axis.plot([int(s) for s in steps], [entry["best_auroc"][s] for s in steps], "-o", markersize=3, color=colours[i % 10], label=concept)
        if concept in input_auroc:
            axis.axhline(input_auroc[concept], color=colours[i % 10], linestyle="--", linewidth=0.8)
    axis.axhline(FOUND_AUROC, color="grey", linestyle=":", linewidth=0.8)
    axis.set_xlabel("training step", fontsize=8)
    axis.set_ylabel("best feature's AUROC (mean over values)", fontsize=8)
    axis.set_ylim(0.45, 1.02)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=6.5, frameon=False, ncol=2, title="solid: UNet dictionaries; dashed: x_t's own", title_fontsize=6.5)
    axis.set_title(title, fontsize=9)
    return figure


def feature_gallery(images: torch.Tensor, codes: torch.Tensor, features: Sequence[int], labels: Sequence[str], title: str, top: int = 6) -> Figure:
    """One row per feature: its ``top`` most activating images (N, C, H, W in [-1, 1]) with where it
    fires (``codes`` (N, F, h, w), upsampled) over them."""
    rows = max(1, len(features))
    figure, axes = new_figure(rows, top, size=(1.1 * top + 1.6, 1.1 * rows + 0.6), dpi=100)
    size = images.shape[-2:]
    for row, (feature, label) in enumerate(zip(features, labels)):
        strength = codes[:, feature].amax(dim=(1, 2))
        order = strength.argsort(descending=True)[:top]
        maps = torch.nn.functional.interpolate(codes[order, feature][:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        peak = float(maps.max()) or 1.0
        for column, (index, heat) in enumerate(zip(order.tolist(), maps)):
            axis = axes[row, column]
            picture = ((images[index].float() + 1) / 2).clamp(0, 1)
            axis.imshow(picture.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if picture.shape[0] == 1 else None)
            axis.imshow((heat / peak).numpy(), cmap="magma", alpha=0.45, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    figure.suptitle(title, fontsize=9)
    return figure
