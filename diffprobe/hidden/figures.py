"""The study's figures, each naming its claim: *rendered* (the reader sees the combination in the
samples), *decodable* / *learned* (the probes, against their baselines), *decided* (lock-in)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from diffprobe.hidden.generate import VARIANTS
from diffprobe.report.viz import image_grid, new_figure

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

VARIANT_LABELS = {
    "plain": "plain prompt",
    "over_prompting": "over-prompting (word rows x scale)",
    "embedding_intervention": "linear intervention on the caption embedding",
    "steering": "probe-direction steering in the UNet",
}


def _signal(run: Mapping) -> str:
    return f"colour contrast {run['concept_signal']['colour_contrast']:g}"


def _combination(run: Mapping) -> str:
    return " ".join((run.get("heldout_combination") or {}).values())


def hidden_capability(runs: Sequence[Mapping]) -> Figure:
    """Per run, the held-out combination's rate under each variant over training (Wilson bands),
    the 80% level and the hidden window shaded. Claim: rendered."""
    figure, axes = new_figure(1, len(runs), size=(4.2 * len(runs), 3.6), dpi=100)
    for axis, run in zip(axes[0], runs):
        steps = [s["step"] for s in run["steps"]]
        for variant in VARIANTS:
            if variant not in run["steps"][0]:
                continue
            (line,) = axis.plot(steps, [s[variant] for s in run["steps"]], marker="o", markersize=3, linewidth=1.3, label=VARIANT_LABELS[variant])
            low = [s["intervals"][variant][0] for s in run["steps"]]
            high = [s["intervals"][variant][1] for s in run["steps"]]
            axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.12)
        axis.axhline(run["level"], color="grey", linestyle="--", linewidth=0.9)
        window = run["hidden_window"]
        if window["hidden"]:
            axis.axvspan(window["opens"], window["closes"] if window["closes"] is not None else steps[-1], color="gold", alpha=0.25, label="hidden window")
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("training step", fontsize=8)
        axis.set_title(f"{_signal(run)}: '{_combination(run)}' rendered", fontsize=9)
        axis.tick_params(labelsize=7)
    axes[0][0].set_ylabel("samples showing the held-out combination", fontsize=8)
    axes[0][0].legend(fontsize=6.5, frameon=False, loc="upper left")
    figure.suptitle("Hidden capability: is the held-out combination made under intervention before plain prompting? (rendered)", fontsize=9)
    return figure


def concept_space(runs: Sequence[Mapping]) -> Figure:
    """The plain held-out prompt's path in concept space: the reader's mean probability of each
    held-out value, one path per run, points labelled by step. Claim: rendered."""
    figure, axes = new_figure(size=(5.4, 4.6), dpi=100)
    axis = axes[0, 0]
    x_concept = y_concept = None
    for run in runs:
        concepts = list(run["steps"][0]["probability"])
        x_concept, y_concept = concepts[0], concepts[-1]
        xs = [s["probability"][x_concept] for s in run["steps"]]
        ys = [s["probability"][y_concept] for s in run["steps"]]
        (line,) = axis.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=_signal(run))
        labelled: list[tuple[float, float]] = []
        for s, x, y in zip(run["steps"], xs, ys):  # a step is labelled unless it sits on a labelled one
            if all(abs(x - a) + abs(y - b) > 0.06 for a, b in labelled):
                axis.annotate(str(s["step"]), (x, y), fontsize=6, color=line.get_color(), xytext=(3, -8), textcoords="offset points")
                labelled.append((x, y))
    combination = runs[0].get("heldout_combination") or {}
    axis.set_xlabel(f"P({x_concept} = {combination.get(x_concept)})", fontsize=8)
    axis.set_ylabel(f"P({y_concept} = {combination.get(y_concept)})", fontsize=8)
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.set_title(f"Concept space of the held-out prompt '{_combination(runs[0])}' over training\n(reader's mean probabilities; labels: training step)", fontsize=9)
    axis.legend(fontsize=7, frameon=False, loc="lower right")
    axis.tick_params(labelsize=7)
    return figure


def speed_against_signal(runs: Sequence[Mapping], concepts: Sequence[str]) -> Figure:
    """The first training step at which plain prompting makes each held-out value (and the
    combination) at 80%, against colour contrast: interpolated between checkpoints (markers), the
    Wilson-interval steps as bars; a run that never reaches 80% is drawn at its last step as an
    open triangle (a lower bound). Learning speed is 1 / this step. Claim: rendered."""
    figure, axes = new_figure(size=(5.6, 3.9), dpi=100)
    axis = axes[0, 0]
    for offset, concept in enumerate(concepts):
        xs, ys, lows, highs = [], [], [], []
        (line,) = axis.plot([], [], marker="o", label=concept)
        colour = line.get_color()
        for run in runs:
            x = run["concept_signal"]["colour_contrast"] * (1 + 0.025 * (offset - 1))
            record = run["learning_speed"]["plain"][concept]
            if record["step"] is None:
                axis.plot([x], [record["last_step"]], marker="^", markerfacecolor="none", color=colour, markersize=7)
                continue
            y = record["interpolated_step"]
            earliest, latest = record["step_interval"]
            xs.append(x)
            ys.append(y)
            lows.append(max(0.0, y - (earliest if earliest is not None else y)))
            highs.append(max(0.0, (latest if latest is not None else y) - y))
        if xs:
            axis.errorbar(xs, ys, yerr=[lows, highs], fmt="o-", color=colour, markersize=4, capsize=2, linewidth=1.2)
    axis.set_xlabel("concept signal: colour contrast", fontsize=8)
    axis.set_ylabel("first step at 80%, plain prompt (lower = faster)", fontsize=8)
    axis.set_title("When each held-out value is first made at 80% (rendered; learning speed = 1 / step)\n"
                   "markers: interpolated between checkpoints; bars: Wilson-interval steps", fontsize=8)  # fmt: skip
    axis.legend(fontsize=7, frameon=False)
    axis.tick_params(labelsize=7)
    return figure


def represented_and_decided(runs: Sequence[Mapping]) -> Figure:
    """Per run, over training: the probes' largest learned gain on held-out images (best layer
    and t, against x_t and the untrained UNet; claim: learned) and each held-out concept's lock-in
    time t_lock (claim: decided), beside the plain prompt's rate (rendered)."""
    figure, axes = new_figure(2, len(runs), size=(4.2 * len(runs), 6.2), dpi=100)
    for column, run in enumerate(runs):
        steps = [s["step"] for s in run["steps"]]
        top, bottom = axes[0][column], axes[1][column]
        for concept in run["steps"][0]["represented"]:
            top.plot(steps, [s["represented"][concept]["learned_gain"] for s in run["steps"]], marker="o", markersize=3, linewidth=1.2, label=f"{concept}: probe gain")
        top.plot(steps, [s["plain"] for s in run["steps"]], color="black", linestyle=":", linewidth=1.2, label="plain prompt rendered")
        top.axhline(0, color="grey", linewidth=0.6)
        top.set_title(f"{_signal(run)}: learned (probes on held-out images)", fontsize=9)
        top.tick_params(labelsize=7)
        for concept in run["steps"][0]["lock_in"]:
            values = [s["lock_in"][concept] for s in run["steps"]]
            bottom.plot([s for s, v in zip(steps, values) if v is not None], [v for v in values if v is not None], marker="s", markersize=3, linewidth=1.2, label=f"{concept}: t_lock")
        bottom.set_title("decided: lock-in t of the held-out values (prompt switch)", fontsize=9)
        bottom.set_xlabel("training step", fontsize=8)
        bottom.tick_params(labelsize=7)
    axes[0][0].set_ylabel("accuracy - best baseline", fontsize=8)
    axes[1][0].set_ylabel("t_lock", fontsize=8)
    axes[0][0].legend(fontsize=6.5, frameon=False)
    axes[1][0].legend(fontsize=6.5, frameon=False)
    return figure


def variant_examples(images: Mapping[str, torch.Tensor], run: Mapping, step: int) -> Figure:
    """One row of samples per variant at ``step``: the same held-out prompts and noise in every
    row, so a row differs from the plain one only through its intervention."""
    rates = next(s for s in run["steps"] if s["step"] == step)
    figure, axes = new_figure(len(images), 1, size=(1.0 * len(next(iter(images.values()))) + 1.5, 1.25 * len(images) + 0.6), dpi=100)
    for axis, (variant, shown) in zip(axes[:, 0], images.items()):
        axis.imshow(image_grid(shown, columns=len(shown)).permute(1, 2, 0).numpy(), interpolation="nearest")
        axis.set_title(f"{VARIANT_LABELS[variant]}: {rates[variant]:.0%} of the measured samples show it", fontsize=7)
        axis.axis("off")
    figure.suptitle(f"{_signal(run)}, step {step}: held-out prompt '{_combination(run)}' (other concepts vary)", fontsize=8)
    return figure
