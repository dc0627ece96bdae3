"""ConceptShapes' design for compositional-generalisation and concept-signal studies: held-out
combinations never reach the training split, the signal settings change the pixels as documented,
and bad designs are refused with what to do instead."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffprobe.data.shapes import CONCEPT_NAMES, CONCEPTS, ConceptShapes, ShapeParams, ShapesDesign, render

SMALL_BLUE = ("small", "blue")


def _has(labels: torch.Tensor, **values: str) -> torch.Tensor:
    hit = torch.ones(len(labels), dtype=torch.bool)
    for concept, value in values.items():
        hit &= labels[:, CONCEPT_NAMES.index(concept)] == CONCEPTS[concept].index(value)
    return hit


def test_heldout_combinations_never_reach_the_training_split_and_stay_in_the_test_split():
    design = ShapesDesign((SMALL_BLUE, ("circle", "teal")))
    train = ConceptShapes(size=1500, image_size=16, split="train", design=design)
    assert not _has(train.labels, size="small", object_colour="blue").any()
    assert not _has(train.labels, shape="circle", background_colour="teal").any()
    # Their parts still train: small objects of other colours, blue objects of other sizes.
    assert _has(train.labels, size="small").sum() > 350 and _has(train.labels, object_colour="blue").sum() > 120
    test = ConceptShapes(size=1500, image_size=16, split="test", design=design)
    assert _has(test.labels, size="small", object_colour="blue").sum() > 50

    # Every other training sample is the plain data set's own.
    plain = ConceptShapes(size=1500, image_size=16, split="train")
    redrawn = _has(plain.labels, size="small", object_colour="blue") | _has(plain.labels, shape="circle", background_colour="teal")
    assert redrawn.any()
    assert torch.equal(train.images[~redrawn], plain.images[~redrawn]) and torch.equal(train.labels[~redrawn], plain.labels[~redrawn])


def test_the_default_design_is_the_plain_data_set():
    a, b = ConceptShapes(size=64, image_size=16), ConceptShapes(size=64, image_size=16, design=ShapesDesign())
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def _solid_object_colour(contrast: float, colour: str) -> torch.Tensor:
    """The mean colour of the pixels wholly inside one large solid circle of ``colour``."""
    labels = torch.zeros(1, len(CONCEPT_NAMES), dtype=torch.long)
    labels[0, CONCEPT_NAMES.index("object_colour")] = CONCEPTS["object_colour"].index(colour)
    labels[0, CONCEPT_NAMES.index("size")] = CONCEPTS["size"].index("large")
    image, _ = render(ShapeParams(labels, torch.tensor([[16.0, 16.0]])), 32, ShapesDesign(colour_contrast=contrast))
    return (image[0, :, 14:18, 14:18].mean(dim=(1, 2)) + 1) / 2


def test_colour_contrast_moves_every_object_colour_towards_the_palette_mean():
    palette = ShapesDesign().object_rgb()
    mean = palette.mean(dim=0)
    for colour in ("red", "blue", "white"):
        expected = mean + 0.25 * (palette[CONCEPTS["object_colour"].index(colour)] - mean)
        assert torch.allclose(_solid_object_colour(0.25, colour), expected, atol=1e-5)
    distances = torch.cdist(ShapesDesign(colour_contrast=0.5).object_rgb(), ShapesDesign(colour_contrast=0.5).object_rgb())
    assert torch.allclose(distances, 0.5 * torch.cdist(palette, palette), atol=1e-6)


def test_size_difference_spreads_the_sizes_around_medium():
    def mean_area(design: ShapesDesign, size: str) -> float:
        data = ConceptShapes(size=400, image_size=16, split="test", design=design)
        chosen = _has(data.labels, size=size, shape="square")
        return float(data.masks[chosen].float().sum(dim=(1, 2, 3)).mean())

    plain, spread, close = ShapesDesign(), ShapesDesign(size_difference=2.0), ShapesDesign(size_difference=0.25)
    assert mean_area(spread, "large") / mean_area(spread, "small") > mean_area(plain, "large") / mean_area(plain, "small") > mean_area(close, "large") / mean_area(close, "small")
    assert torch.allclose(spread.size_radius(), torch.tensor([0.08, 0.20, 0.32], dtype=torch.float64))
    assert abs(mean_area(close, "medium") - mean_area(plain, "medium")) < 1e-6


@pytest.mark.parametrize(
    ("design", "says"),
    [
        (dict(heldout_combinations=[("small", "purple")]), "'purple' is not a ConceptShapes value"),
        (dict(heldout_combinations=[("blue",)]), "at least two values of different concepts"),
        (dict(heldout_combinations=[("small", "large")]), "names two values of size"),
        (dict(heldout_combinations=[("small", "blue"), ("medium", "blue"), ("large", "blue")]), "leave object_colour 'blue' with no training image"),
        (dict(colour_contrast=0.0), "colour_contrast must be in (0, 1]"),
        (dict(size_difference=4.0), "size_difference must be in (0, 3.0]"),
    ],
)
def test_a_bad_design_is_refused_with_what_to_do(design, says):
    with pytest.raises(ValueError) as refused:
        ShapesDesign(**design)
    assert says in str(refused.value)


def test_is_heldout_reads_label_indices():
    design = ShapesDesign((SMALL_BLUE,))
    labels = np.zeros(len(CONCEPT_NAMES), dtype=np.int64)
    labels[CONCEPT_NAMES.index("size")] = CONCEPTS["size"].index("small")
    labels[CONCEPT_NAMES.index("object_colour")] = CONCEPTS["object_colour"].index("blue")
    assert design.is_heldout(labels)
    labels[CONCEPT_NAMES.index("size")] = CONCEPTS["size"].index("large")
    assert not design.is_heldout(labels)
