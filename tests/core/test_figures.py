"""Every figure a reader meets says what it shows: a title, labelled axes or panels, and a colour
bar where colour carries a value (checked on the matplotlib objects, not on pixels)."""

from __future__ import annotations

import pytest
import torch

from diffprobe.probes import figures
from diffprobe.report import viz


def _title(figure) -> str:
    return figure._suptitle.get_text() if figure._suptitle is not None else " ".join(a.get_title() for a in figure.axes)


def _plots(figure):
    """The axes that hold data (colour bars are axes too; they carry a label instead)."""
    return [a for a in figure.axes if a.get_label() != "<colorbar>" and a.axison]


def _colour_bars(figure) -> list[str]:
    return [a.get_ylabel() for a in figure.axes if a.get_label() == "<colorbar>"]


T = [0, 50, 500, 950]
CONCEPTS = ["shape", "colour"]
HEAT = torch.rand(8, 8)
IMAGES = torch.rand(3, 3, 16, 16) * 2 - 1


def _heatmap():
    accuracy = torch.tensor([[0.5, 0.9, 0.3, 0.2], [0.6, 0.95, 0.4, 0.25]])
    significant = accuracy > 0.5
    return figures.accuracy_heatmap(accuracy, ["mid_block", "up_blocks.0"], T, "shape: probe accuracy (step 600)", 0.25, significant)


FIGURES = {
    "accuracy_heatmap": _heatmap,
    "decodability_curves": lambda: figures.decodability_curves(torch.rand(4, 2), torch.rand(4, 2) > 0.5, T, CONCEPTS, "decodability (step 600)"),
    "decodability_over_training": lambda: figures.decodability_over_training(
        {100: torch.rand(4, 2), 600: torch.rand(4, 2)}, {100: torch.rand(4, 2) > 0.5, 600: torch.rand(4, 2) > 0.5}, T, CONCEPTS, "over training"
    ),
    "decodability_with_baselines": lambda: figures.decodability_curves(
        torch.rand(4, 2), torch.rand(4, 2) > 0.3, T, CONCEPTS, "learned vs decodable (step 600)", torch.rand(4, 2) * 0.5, torch.rand(4, 2) > 0.5
    ),
    "largest_t_over_training": lambda: figures.largest_t_over_training({100: [50, None], 600: [500, 50]}, CONCEPTS, "largest learned t", 1000, "largest learned t"),
    "metric_curves": lambda: viz.metric_curves({"mse": [0.1, 0.2, 0.3, 0.4], "ssim": [0.9, 0.8, 0.5, 0.1]}, T, "x0_hat vs x0"),
    "line_panels": lambda: viz.line_panels({"uniform": {"0:a": ([999, 500], [0.1, 0.9])}}, "token relevance", "timestep t", "relevance"),
    "grouped_bars": lambda: viz.grouped_bars({"uniform": [1.0, 2.0]}, ["subject", "object"], "relevance by role", "summed relevance", "role"),
    "image_panels": lambda: viz.image_panels({"mid_block": IMAGES[0], "up_blocks.0": IMAGES[1]}, "DF-CAM per layer", heat_label="Grad-CAM"),
    "saliency_figure": lambda: viz.saliency_figure({"over x_t (t = 249)": (IMAGES[0], HEAT), "over the final image": (IMAGES[1], HEAT)}, "DF-RISE"),
    "image_rows": lambda: viz.image_rows({"t = 50": IMAGES, "t = 500": IMAGES}, ["image 1", "image 2", "image 3"], "x0_hat by timestep"),
    "attention_grid": lambda: viz.attention_grid(
        IMAGES, {"object query (+), t = 50": torch.rand(3, 4, 4), "background query (x), t = 50": torch.rand(3, 4, 4)}, torch.rand(3, 2), torch.rand(3, 2), "self-attention"
    ),
}
# Figures whose colour means a value: the colour bar must say which.
COLOURED = {"accuracy_heatmap", "image_panels", "saliency_figure", "attention_grid"}
# Figures of pictures: their panels are titled (columns) or labelled (rows) instead of having axes.
PICTURES = {"image_panels", "saliency_figure", "image_rows", "attention_grid"}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_is_titled_and_labelled(name):
    figure = FIGURES[name]()
    assert _title(figure).strip(), f"{name} has no title"
    plots = _plots(figure)
    assert plots, name
    if name in PICTURES:
        for axis in plots:  # a picture is named by its panel title, or its grid's rows and columns by tick labels
            ticks = [[t.get_text() for t in labels] for labels in (axis.get_xticklabels(), axis.get_yticklabels())]
            assert axis.get_title() or all(all(names) and names for names in ticks), f"{name}: an unlabelled picture"
    else:
        for axis in plots:
            assert axis.get_xlabel() and axis.get_ylabel(), f"{name}: axes without labels"
    bars = _colour_bars(figure)
    if name in COLOURED:
        assert bars and all(bars), f"{name}: colour carries a value but has no labelled colour bar"


def test_heatmap_colour_is_relative_to_chance_and_explains_the_marker():
    figure = _heatmap()
    image = next(a for a in _plots(figure)).images[0]
    colour = torch.as_tensor(image.get_array())
    assert float(colour[0, 3]) == 0.0, "accuracy below chance shows as chance (0), not as 'moderate'"
    assert float(colour[1, 1]) == pytest.approx((0.95 - 0.25) / 0.75)
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert "·" in texts and ".95" in texts
    assert "not significantly above chance" in figure._supxlabel.get_text()
    assert [t.get_text() for t in _colour_bars_axes(figure)[0].get_yticklabels()][0] == "chance"


def _colour_bars_axes(figure):
    return [a for a in figure.axes if a.get_label() == "<colorbar>"]


def test_largest_t_marks_a_concept_decodable_nowhere_as_none():
    figure = figures.largest_t_over_training({100: [50, None], 600: [500, None]}, CONCEPTS, "t", 1000)
    axis = _plots(figure)[0]
    lines = {line.get_label(): line for line in axis.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == set(CONCEPTS)
    none = lines["colour"].get_ydata()[0]
    assert none < 0 and "none" in [t.get_text() for t in axis.get_yticklabels()]
    assert list(lines["shape"].get_ydata()) == [50, 500]
