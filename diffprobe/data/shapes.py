"""ConceptShapes: procedural images with ground-truth concepts of different granularity.

Each image is one object on a plain background. Its labels:

====================  ===========================================  ==============
concept               values                                       frequency
====================  ===========================================  ==============
background_colour     black, navy, maroon, teal                    low (global)
object_colour         red, green, blue, yellow, magenta, white     low
position              3x3 grid cell (top/middle/bottom x l/c/r)    low
size                  small, medium, large                         mid
shape                 circle, square, triangle, cross              high (outline)
texture               solid, stripes, dots, checker                high
====================  ===========================================  ==============

Sample ``i`` of a split is a pure function of ``(seed, split, i)``: its labels and jitter come
from ``numpy.random.default_rng([seed, split_id, i])``. Rendering is vectorised over the data set
(supersampled for smooth edges), so 10,000 images at 32x32 take seconds.

The concepts, their pixels and :class:`ShapesDesign` (held-out combinations, concept signal) are in
:mod:`diffprobe.data.shapes_concepts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from diffprobe.choices import Split
from diffprobe.data.shapes_concepts import BACKGROUND_RGB, CONCEPT_NAMES, CONCEPTS, OBJECT_RGB, SIZE_RADIUS, ShapesDesign

# Re-exported: the data set's names are imported from here.
__all__ = [
    "BACKGROUND_RGB", "CAPTION_TEMPLATE", "CONCEPTS", "CONCEPT_NAMES", "OBJECT_RGB", "SIZE_RADIUS", "SUPPORTED_SIZES", "TEXTURE_ADJECTIVE",
    "ConceptShapes", "ShapeParams", "ShapesDesign", "caption", "draw_params", "parse_caption", "render", "vocabulary",
]  # fmt: skip

TEXTURE_ADJECTIVE = {"solid": "solid", "stripes": "striped", "dots": "dotted", "checker": "checkered"}
POSITION_JITTER = 0.06  # fraction of the image side
TEXTURE_SHADE = 0.55  # how much darker the pattern's "on" pixels are
CAPTION_TEMPLATE = "a {size} {colour} {texture} {shape} at the {position} on a {background} background"
SPLIT_IDS = {"train": 0, "test": 1}
SUPPORTED_SIZES = (16, 32, 64)


def vocabulary() -> list[str]:
    """Every word a ConceptShapes caption can contain, in a fixed order."""
    words: list[str] = []
    template = CAPTION_TEMPLATE.format(size="", colour="", texture="", shape="", position="", background="")
    candidates = [
        *template.split(),
        *CONCEPTS["size"],
        *CONCEPTS["object_colour"],
        *TEXTURE_ADJECTIVE.values(),
        *CONCEPTS["shape"],
        *(w for p in CONCEPTS["position"] for w in p.split()),
        *CONCEPTS["background_colour"],
    ]
    for word in candidates:
        if word not in words:
            words.append(word)
    return words


def caption(labels: dict[str, int]) -> str:
    """The caption of one sample from its label indices."""
    return CAPTION_TEMPLATE.format(
        size=CONCEPTS["size"][labels["size"]],
        colour=CONCEPTS["object_colour"][labels["object_colour"]],
        texture=TEXTURE_ADJECTIVE[CONCEPTS["texture"][labels["texture"]]],
        shape=CONCEPTS["shape"][labels["shape"]],
        position=CONCEPTS["position"][labels["position"]],
        background=CONCEPTS["background_colour"][labels["background_colour"]],
    )


def parse_caption(text: str) -> dict[str, int]:
    """The label indices of a ConceptShapes caption (the inverse of :func:`caption`); a ValueError
    that shows the template otherwise."""
    example = caption({name: 0 for name in CONCEPT_NAMES})
    words = text.lower().split()
    template = CAPTION_TEMPLATE.replace("{position}", "{row} {column}").split()
    texture = {adjective: name for name, adjective in TEXTURE_ADJECTIVE.items()}
    found: dict[str, str] = {}
    if len(words) == len(template):
        for slot, word in zip(template, words):
            if slot.startswith("{"):
                found[slot.strip("{}")] = word
            elif slot != word:
                break
        else:
            position = f"{found['row']} {found['column']}"
            values = {
                "size": found["size"],
                "object_colour": found["colour"],
                "texture": texture.get(found["texture"], ""),
                "shape": found["shape"],
                "position": position,
                "background_colour": found["background"],
            }
            if all(value in CONCEPTS[name] for name, value in values.items()):
                return {name: CONCEPTS[name].index(values[name]) for name in CONCEPT_NAMES}
    raise ValueError(f"{text!r} is not a ConceptShapes caption; write it as {CAPTION_TEMPLATE!r}, e.g. {example!r}")


@dataclass
class ShapeParams:
    """Everything that decides a batch of N samples. labels: (N, num_concepts) long, in
    CONCEPT_NAMES order; centre: (N, 2) float (x, y) in pixels of the output image."""

    labels: torch.Tensor
    centre: torch.Tensor


def draw_params(indices: np.ndarray, *, seed: int, split: str, image_size: int, design: ShapesDesign | None = None) -> ShapeParams:
    """Labels and object centres of the samples ``indices``, each from its own seeded generator."""
    design = design or ShapesDesign()
    radii = design.size_radius().tolist()
    labels = np.empty((len(indices), len(CONCEPTS)), dtype=np.int64)
    centre = np.empty((len(indices), 2), dtype=np.float64)
    cell = image_size / 3
    for row, index in enumerate(indices):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], int(index)])
        labels[row] = [rng.integers(len(values)) for values in CONCEPTS.values()]
        while split == "train" and design.is_heldout(labels[row]):  # drawn again from its own generator
            labels[row] = [rng.integers(len(values)) for values in CONCEPTS.values()]
        jitter = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2) * image_size
        position = labels[row, CONCEPT_NAMES.index("position")]
        radius = radii[labels[row, CONCEPT_NAMES.index("size")]] * image_size
        # Keep the whole object inside the image; the cell centre stays inside its cell, so the
        # position label remains true.
        xy = np.array([(position % 3 + 0.5) * cell, (position // 3 + 0.5) * cell]) + jitter
        centre[row] = np.clip(xy, radius, image_size - radius)
    return ShapeParams(labels=torch.from_numpy(labels), centre=torch.from_numpy(centre).float())


def _shape_inside(shape: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Boolean coverage of each shape at offsets (dx, dy) in units of the radius; y points down."""
    circle = dx.square() + dy.square() <= 1.0
    square = torch.maximum(dx.abs(), dy.abs()) <= 0.85
    triangle = (dy.abs() <= 0.9) & (dx.abs() <= (dy + 0.9) / 1.8)  # apex at the top
    cross = ((dx.abs() <= 0.33) & (dy.abs() <= 1.0)) | ((dy.abs() <= 0.33) & (dx.abs() <= 1.0))
    by_shape = torch.stack([circle, square, triangle, cross])  # (4, N, H, W)
    return torch.gather(by_shape, 0, shape.view(1, -1, 1, 1).expand(1, *dx.shape)).squeeze(0)


def _texture_on(texture: torch.Tensor, x: torch.Tensor, y: torch.Tensor, period: float) -> torch.Tensor:
    """Where each texture darkens the object; x, y in output pixels (broadcast to (N, H, W))."""
    solid = torch.zeros_like(x, dtype=torch.bool)
    stripes = torch.floor((x + y) / period).remainder(2) == 1
    checker = (torch.floor(x / period) + torch.floor(y / period)).remainder(2) == 1
    fx, fy = x.remainder(period) - period / 2, y.remainder(period) - period / 2
    dots = fx.square() + fy.square() <= (0.3 * period) ** 2
    by_texture = torch.stack([solid, stripes.expand_as(solid), dots.expand_as(solid), checker.expand_as(solid)])
    return torch.gather(by_texture, 0, texture.view(1, -1, 1, 1).expand(1, *solid.shape)).squeeze(0)


def render(params: ShapeParams, image_size: int, design: ShapesDesign | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, S, S) float in [-1, 1] and object masks (N, 1, S, S) bool.

    Rendered at ``supersample`` x the resolution and box-filtered down, so edges are anti-aliased;
    the mask is where at least half of a pixel is covered by the object.
    """
    supersample = max(1, min(4, 64 // image_size))
    fine = image_size * supersample
    coords = (torch.arange(fine, dtype=torch.float32) + 0.5) / supersample  # output-pixel units
    y, x = coords.view(1, fine, 1), coords.view(1, 1, fine)
    labels = params.labels
    column = {name: labels[:, i] for i, name in enumerate(CONCEPT_NAMES)}
    design = design or ShapesDesign()
    radius = design.size_radius()[column["size"]] * image_size
    dx = (x - params.centre[:, 0].view(-1, 1, 1)) / radius.view(-1, 1, 1)
    dy = (y - params.centre[:, 1].view(-1, 1, 1)) / radius.view(-1, 1, 1)
    dx, dy = torch.broadcast_tensors(dx, dy)  # (N, fine, fine)
    inside = _shape_inside(column["shape"], dx, dy).float()  # (N, fine, fine)
    period = max(4.0, image_size / 8)
    shade = 1.0 - TEXTURE_SHADE * _texture_on(column["texture"], x.expand_as(dx), y.expand_as(dx), period).float()

    object_rgb = design.object_rgb()[column["object_colour"]]
    background_rgb = torch.tensor([BACKGROUND_RGB[c] for c in CONCEPTS["background_colour"]])[column["background_colour"]]
    obj = object_rgb.view(-1, 3, 1, 1) * shade.unsqueeze(1)
    image = background_rgb.view(-1, 3, 1, 1) + inside.unsqueeze(1) * (obj - background_rgb.view(-1, 3, 1, 1))
    image = torch.nn.functional.avg_pool2d(image, supersample)
    coverage = torch.nn.functional.avg_pool2d(inside.unsqueeze(1), supersample)
    return image * 2 - 1, coverage >= 0.5


class ConceptShapes(Dataset):
    """The data set: ``size`` samples of one split, rendered once into memory (uint8).

    Items are dicts: ``image`` (3, S, S) float in [-1, 1], ``labels`` (num_concepts,) long in
    ``CONCEPT_NAMES`` order, ``mask`` (1, S, S) bool, ``caption`` str, ``index`` int.
    """

    concepts = CONCEPTS
    concept_names = CONCEPT_NAMES

    def __init__(
        self, size: int = 10_000, image_size: int = 32, split: Split = "train", seed: int = 0, chunk: int = 2048, design: ShapesDesign | None = None
    ):
        if image_size not in SUPPORTED_SIZES:
            raise ValueError(f"ConceptShapes image_size must be one of {SUPPORTED_SIZES}, got {image_size}")
        if split not in SPLIT_IDS:
            raise ValueError(f"ConceptShapes split must be 'train' or 'test', got {split!r}")
        if size < 1:
            raise ValueError(f"ConceptShapes size must be positive, got {size}")
        self.size, self.image_size, self.split, self.seed = size, image_size, split, seed
        self.design = design or ShapesDesign()
        params = draw_params(np.arange(size), seed=seed, split=split, image_size=image_size, design=self.design)
        images, masks = [], []
        for start in range(0, size, chunk):
            part = ShapeParams(params.labels[start : start + chunk], params.centre[start : start + chunk])
            image, mask = render(part, image_size, self.design)
            images.append(((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
            masks.append(mask)
        self.images = torch.cat(images)
        self.masks = torch.cat(masks)
        self.labels = params.labels
        self.centres = params.centre
        self._captions: list[str] | None = None  # made on first use, all at once

    def __len__(self) -> int:
        return self.size

    def label_dict(self, index: int) -> dict[str, int]:
        return {name: int(v) for name, v in zip(CONCEPT_NAMES, self.labels[index])}

    def caption(self, index: int) -> str:
        if self._captions is None:  # one pass over plain ints: a batch then costs list lookups
            self._captions = [caption(dict(zip(CONCEPT_NAMES, row))) for row in self.labels.tolist()]
        return self._captions[index]

    def __getitem__(self, index: int) -> dict:
        return {
            "image": self.images[index].float().div_(127.5).sub_(1.0),  # in place: no temporaries
            "labels": self.labels[index],
            "mask": self.masks[index],
            "caption": self.caption(index),
            "index": index,
        }

    def fetch_batch(self, indices: list[int]) -> dict:
        """A whole batch in a few tensor ops: what stacking ``__getitem__`` gives, without a Python
        call per sample. The DataModule's loader fetches through it (``data.module.WholeBatches``):
        at GPU speed (4,000+ images/s) per-sample fetching and collating cost 5 ms of every 32 ms
        step on the main process."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return {
            # index_select, not advanced indexing (10x faster on CPU); in-place scaling makes the
            # same values as __getitem__ without temporaries.
            "image": self.images.index_select(0, index).float().div_(127.5).sub_(1.0),
            "labels": self.labels.index_select(0, index),
            "mask": self.masks.index_select(0, index),
            "caption": [self.caption(i) for i in indices],
            "index": index,
        }
