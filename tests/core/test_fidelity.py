"""Concept fidelity on planted cases: a perfect renderer scores 1.0, one that ignores a concept
leaves that concept near chance, an unconditional sampler with the data's value distribution has a
small total variation, and memorisation tells exact copies from fresh images."""

from __future__ import annotations

import pytest
import torch

from diffprobe.data.shapes import CONCEPT_NAMES, CONCEPTS, SIZE_RADIUS, ShapeParams, render
from diffprobe.fidelity.measure import SamplePlan, conditional_scores, read, rendered_at_step, score
from diffprobe.fidelity.memorisation import memorised
from diffprobe.intervene.reader import ConceptReader

SIZE = 16


def rendered(labels: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) ConceptShapes images of exactly these labels (objects at their cell centres)."""
    cell = SIZE / 3
    position = labels[:, CONCEPT_NAMES.index("position")]
    radius = torch.tensor([SIZE_RADIUS[s] for s in CONCEPTS["size"]])[labels[:, CONCEPT_NAMES.index("size")]] * SIZE
    centre = torch.stack([(position % 3 + 0.5) * cell, (position // 3 + 0.5) * cell], dim=1).float()
    centre = torch.maximum(torch.minimum(centre, SIZE - radius[:, None]), radius[:, None])
    return render(ShapeParams(labels, centre), SIZE)[0]


def every_label(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(len(v), (count,), generator=generator) for v in CONCEPTS.values()], dim=1)


class LookupReader(ConceptReader):
    """A perfect reader of exact renders: each image is matched to the nearest of a table of
    rendered images with known labels."""

    def __init__(self, table_labels: torch.Tensor):
        super().__init__(CONCEPTS, SIZE)
        self.table_images, self.table_labels = rendered(table_labels).flatten(1), table_labels

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        nearest = torch.cdist(images.flatten(1), self.table_images).argmin(1)
        labels = self.table_labels[nearest]
        return {name: torch.nn.functional.one_hot(labels[:, k], len(values)).float() * 10 for k, (name, values) in enumerate(CONCEPTS.items())}


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return every_label(400, seed=1)


@pytest.fixture(scope="module")
def reader(labels) -> LookupReader:
    return LookupReader(torch.cat([labels, every_label(3000, seed=2)]))


def test_a_perfect_renderer_scores_one(labels, reader):
    plan = SamplePlan(num_images=len(labels), captions=tuple("x" for _ in labels), labels=labels)
    scores = score(reader, rendered(labels), plan)
    assert [s.concept for s in scores] == list(CONCEPT_NAMES)
    assert all(s.value == 1.0 and s.metric == "fidelity" and s.n == len(labels) and s.ci_low > 0.98 for s in scores)


def test_a_renderer_that_ignores_a_concept_leaves_it_near_chance(labels):
    ignored = labels.clone()
    k = CONCEPT_NAMES.index("shape")
    ignored[:, k] = torch.randint(len(CONCEPTS["shape"]), (len(labels),), generator=torch.Generator().manual_seed(3))
    reader = LookupReader(torch.cat([ignored, labels]))  # it knows every image it will see
    plan = SamplePlan(num_images=len(labels), captions=tuple("x" for _ in labels), labels=labels)
    scores = {s.concept: s for s in score(reader, rendered(ignored), plan)}
    # chance is 1/4; small objects at 16 px make some shapes alike, which lifts a random guess a little
    assert 0.15 < scores["shape"].value < 0.45 and scores["shape"].ci_high < 0.5
    assert all(scores[c].value == 1.0 for c in CONCEPT_NAMES if c != "shape")


def test_unconditional_total_variation_and_confidence(labels, reader):
    plan = SamplePlan(num_images=len(labels))
    reference = read(reader, rendered(every_label(400, seed=5)))[0]
    matched = {s.concept: s for s in score(reader, rendered(labels), plan, reference)}
    assert all(s.metric == "tv" and s.value < 0.15 and s.confident == 1.0 for s in matched.values()), "same distribution: small TV"
    collapsed = labels.clone()
    collapsed[:, CONCEPT_NAMES.index("object_colour")] = 0  # every sample red
    scores = {s.concept: s for s in score(reader, rendered(collapsed), plan, reference)}
    assert scores["object_colour"].value > 0.7 and scores["shape"].value < 0.15


def test_conditional_scores_have_wilson_intervals():
    readings, truth = torch.tensor([[0], [1], [1], [1]]), torch.tensor([[1], [1], [1], [1]])
    (only,) = conditional_scores(readings, truth, ["shape"])
    assert only.value == 0.75 and only.ci_low < 0.75 < only.ci_high


def test_rendered_at_step_is_the_first_step_it_stays_rendered():
    assert rendered_at_step({0: 0.2, 100: 0.95, 200: 0.85, 300: 0.92, 400: 0.97}, 0.9) == 300
    assert rendered_at_step({0: 0.2, 100: 0.95, 200: 0.85}, 0.9) is None
    assert rendered_at_step({0: 0.5, 100: 0.08}, 0.1, higher_is_better=False) == 100
    assert rendered_at_step({}, 0.9) is None


def test_memorisation_tells_copies_from_fresh_images(labels):
    train = rendered(labels[:200]) + 0.2 * torch.randn(200, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    copies = train[:50] + 0.001 * torch.randn(50, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    fresh = rendered(every_label(50, seed=9)) + 0.2 * torch.randn(50, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    assert memorised(copies, train).all()
    assert memorised(fresh, train).float().mean() < 0.1
    with pytest.raises(ValueError, match="at least 2 training images"):
        memorised(copies, train[:1])
