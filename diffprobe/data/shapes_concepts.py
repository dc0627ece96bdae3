"""ConceptShapes' concepts, how each one shows in the pixels, and the design that changes both.

A :class:`ShapesDesign` changes what the data set holds and how strongly two concepts show, for
studies of compositional generalisation and concept signal (Park et al., NeurIPS 2024):

- ``heldout_combinations``: combinations of concept values (``("small", "blue")``) that never occur
  in the training split (a training sample that draws one draws its labels again from its own
  generator); the test split keeps them. Every other sample is the default data set's.
- ``colour_contrast`` c: object colour v renders as m + c (rgb(v) - m), m the mean of the six
  object colours: at 1 the default palette, towards 0 all objects the same grey.
- ``size_difference`` d: size v's half-extent is r_medium + d (r(v) - r_medium) of the image side
  (r = 0.14, 0.20, 0.26 at d = 1): towards 0 all objects medium-sized.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import numpy as np
import torch

CONCEPTS: dict[str, tuple[str, ...]] = {
    "background_colour": ("black", "navy", "maroon", "teal"),
    "object_colour": ("red", "green", "blue", "yellow", "magenta", "white"),
    "shape": ("circle", "square", "triangle", "cross"),
    "size": ("small", "medium", "large"),
    "position": tuple(f"{row} {col}" for row in ("top", "middle", "bottom") for col in ("left", "centre", "right")),
    "texture": ("solid", "stripes", "dots", "checker"),
}
CONCEPT_NAMES: tuple[str, ...] = tuple(CONCEPTS)

BACKGROUND_RGB = {"black": (0.05, 0.05, 0.05), "navy": (0.05, 0.08, 0.40), "maroon": (0.42, 0.05, 0.08), "teal": (0.05, 0.38, 0.36)}
OBJECT_RGB = {
    "red": (0.95, 0.15, 0.12),
    "green": (0.15, 0.85, 0.20),
    "blue": (0.25, 0.45, 1.00),
    "yellow": (0.98, 0.90, 0.15),
    "magenta": (0.92, 0.20, 0.90),
    "white": (0.97, 0.97, 0.97),
}
SIZE_RADIUS = {"small": 0.14, "medium": 0.20, "large": 0.26}  # half-extent as a fraction of the image side
MAX_SIZE_DIFFERENCE = 3.0  # a small object keeps a positive size and a large one stays inside the image


@dataclass(frozen=True)
class ShapesDesign:
    """Held-out combinations and concept signal (see the module docstring); the default is the
    plain data set. Checked when made: a ValueError names the problem and the fix."""

    heldout_combinations: tuple[tuple[str, ...], ...] = ()
    colour_contrast: float = 1.0
    size_difference: float = 1.0
    _heldout_labels: tuple[dict[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.colour_contrast <= 1:
            raise ValueError(f"colour_contrast must be in (0, 1] (1: the default palette), got {self.colour_contrast}")
        if not 0 < self.size_difference <= MAX_SIZE_DIFFERENCE:
            raise ValueError(f"size_difference must be in (0, {MAX_SIZE_DIFFERENCE}] (1: the default sizes), got {self.size_difference}")
        combinations = tuple(tuple(c) for c in self.heldout_combinations)
        object.__setattr__(self, "heldout_combinations", combinations)
        object.__setattr__(self, "_heldout_labels", tuple(combination_labels(c) for c in combinations))
        _check_every_value_trains(self._heldout_labels)

    def is_heldout(self, labels: np.ndarray | list[int]) -> bool:
        """Whether one sample's label indices (CONCEPT_NAMES order) hold a held-out combination."""
        return any(all(labels[concept] == value for concept, value in held.items()) for held in self._heldout_labels)

    def object_rgb(self) -> torch.Tensor:
        """(6, 3) object colours in CONCEPTS order, at this colour contrast."""
        rgb = torch.tensor([OBJECT_RGB[c] for c in CONCEPTS["object_colour"]])
        if self.colour_contrast == 1:
            return rgb  # exactly the default palette (the formula would round its last bits)
        mean = rgb.mean(dim=0, keepdim=True)
        return mean + self.colour_contrast * (rgb - mean)

    def size_radius(self) -> torch.Tensor:
        """(3,) half-extents as fractions of the image side, in CONCEPTS order, at this size difference."""
        radius = torch.tensor([SIZE_RADIUS[s] for s in CONCEPTS["size"]], dtype=torch.float64)
        if self.size_difference == 1:
            return radius
        medium = SIZE_RADIUS["medium"]
        return medium + self.size_difference * (radius - medium)


def value_concept(value: str) -> str:
    """The concept a value name belongs to (value names are unique across concepts)."""
    for concept, values in CONCEPTS.items():
        if value in values:
            return concept
    known = "; ".join(f"{c}: {', '.join(v)}" for c, v in CONCEPTS.items())
    raise ValueError(f"held-out combination value {value!r} is not a ConceptShapes value; the values are {known}")


def combination_labels(combination: tuple[str, ...]) -> dict[int, int]:
    """{concept index: value index} of a combination of value names, e.g. ("small", "blue")."""
    if len(combination) < 2:
        raise ValueError(f"a held-out combination names at least two values of different concepts, got {list(combination)} (one value alone would never be trained)")
    labels: dict[int, int] = {}
    for value in combination:
        concept = value_concept(value)
        index = CONCEPT_NAMES.index(concept)
        if index in labels:
            raise ValueError(f"held-out combination {list(combination)} names two values of {concept}; a combination takes one value per concept")
        labels[index] = CONCEPTS[concept].index(value)
    return labels


def _check_every_value_trains(heldout: tuple[dict[int, int], ...]) -> None:
    """Refuse held-out combinations that together remove every training image of some value."""
    if not heldout:
        return
    involved = sorted({concept for held in heldout for concept in held})
    allowed = [assignment for assignment in product(*(range(len(CONCEPTS[CONCEPT_NAMES[c]])) for c in involved))
               if not any(all(assignment[involved.index(c)] == v for c, v in held.items()) for held in heldout)]  # fmt: skip
    for position, concept in enumerate(involved):
        name = CONCEPT_NAMES[concept]
        for value in range(len(CONCEPTS[name])):
            if not any(assignment[position] == value for assignment in allowed):
                raise ValueError(f"the held-out combinations leave {name} {CONCEPTS[name][value]!r} with no training image; hold out fewer combinations with it")
