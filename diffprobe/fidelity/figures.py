"""Fidelity over training as a figure: one line per concept against training step, with its
Wilson band (conditional) and the threshold that makes a concept *rendered*."""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffprobe.fidelity.results import RENDERED
from diffprobe.report.viz import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def fidelity_over_training(rows: list[dict], weights: str, title: str) -> Figure:
    """Rows of one set of weights (``fidelity`` or ``tv``) as lines over training steps."""
    mine = [r for r in rows if r["weights"] == weights]
    metric = mine[0]["metric"]
    threshold, higher = RENDERED[metric]
    figure, axes = new_figure(size=(6.6, 3.6), dpi=100)
    axis = axes[0, 0]
    for concept in dict.fromkeys(r["concept"] for r in mine):
        points = sorted({int(r["step"]): r for r in mine if r["concept"] == concept}.items())
        steps = [s for s, _ in points]
        (line,) = axis.plot(steps, [r["value"] for _, r in points], marker="o", markersize=3, linewidth=1.4, label=concept)
        if metric == "fidelity":
            axis.fill_between(steps, [r["ci_low"] for _, r in points], [r["ci_high"] for _, r in points], color=line.get_color(), alpha=0.15)
    axis.axhline(threshold, color="grey", linestyle="--", linewidth=0.9)
    axis.set_xlabel("training step", fontsize=8)
    if metric == "fidelity":
        axis.set_ylabel("samples showing the caption's value", fontsize=8)
        axis.set_ylim(0, 1.02)
    else:
        axis.set_ylabel("total variation: samples vs held-out data", fontsize=8)
        axis.set_ylim(0, 1.0)
    side = ">=" if higher else "<="
    axis.set_title(f"{title}\n(rendered: {metric} {side} {threshold:.2f} from then on, dashed)", fontsize=9)
    axis.legend(fontsize=7, frameon=False, ncol=2)
    axis.tick_params(labelsize=7)
    return figure
