"""The held-out combination's prompts and the two interventions on their caption embedding.

Both interventions change only the rows of the combination's words in the caption encoder's
output (B, L, D), the conditioning every cross-attention reads:

- over-prompting (Park et al.'s stronger concept input): the words' rows times ``scale``, so
  cross-attention weighs them more, concept by concept (a larger guidance scale would instead
  strengthen the whole caption, background and shape included);
- the linear intervention: each word's row moved ``length`` times along the direction from the
  mean of its concept's other (trained) values to it, the same target-against-the-rest direction
  the probe steering uses in the UNet (:func:`diffprobe.intervene.steer.probe_direction`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffprobe.data.shapes import CONCEPT_NAMES, CONCEPTS, caption
from diffprobe.data.shapes_concepts import combination_labels

# Concepts whose value names are the caption's own words (texture reads "striped", position two words).
WORD_CONCEPTS = ("object_colour", "size", "shape", "background_colour")


@dataclass(frozen=True)
class HeldoutPrompts:
    """``captions`` that all name the held-out ``combination`` (concept -> value), the other
    concepts drawn at random (seeded); ``labels`` (N, K) their value indices in CONCEPT_NAMES order."""

    combination: dict[str, str]
    captions: tuple[str, ...]
    labels: torch.Tensor

    @property
    def concept_indices(self) -> list[int]:
        return [CONCEPT_NAMES.index(c) for c in self.combination]


def heldout_prompts(combination: tuple[str, ...] | list[str], count: int, seed: int = 0) -> HeldoutPrompts:
    """``count`` captions of ``combination`` (value names, e.g. ("small", "blue"))."""
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    fixed = combination_labels(tuple(combination))
    wordless = [CONCEPT_NAMES[k] for k in fixed if CONCEPT_NAMES[k] not in WORD_CONCEPTS]
    if wordless:
        raise ValueError(f"the caption interventions move a value's own word; {wordless} are not single caption words: hold out values of {list(WORD_CONCEPTS)}")
    generator = torch.Generator().manual_seed(seed)
    columns = [torch.randint(len(CONCEPTS[name]), (count,), generator=generator) for name in CONCEPT_NAMES]
    labels = torch.stack(columns, dim=1)
    for k, value in fixed.items():
        labels[:, k] = value
    captions = tuple(caption(dict(zip(CONCEPT_NAMES, row))) for row in labels.tolist())
    named = {CONCEPT_NAMES[k]: CONCEPTS[CONCEPT_NAMES[k]][v] for k, v in sorted(fixed.items())}
    return HeldoutPrompts(named, captions, labels)


def word_position(tokenizer, text: str, word: str) -> int:
    """The token position of ``word`` in ``text`` (its first occurrence)."""
    words = tokenizer.split(text)
    if word not in words:
        raise ValueError(f"{word!r} is not a word of the caption {text!r}")
    return words.index(word)


def over_prompted(encoder, captions: tuple[str, ...] | list[str], words: list[str], scale: float) -> torch.Tensor:
    """(N, L, D): the captions' embedding with the rows of ``words`` times ``scale``."""
    condition = encoder.encode(list(captions)).clone()
    for row, text in enumerate(captions):
        for word in words:
            condition[row, word_position(encoder.tokenizer, text, word)] *= scale
    return condition


def moved_along_values(encoder, captions: tuple[str, ...] | list[str], combination: dict[str, str], length: float) -> torch.Tensor:
    """(N, L, D): the captions' embedding with each combination word's row moved by ``length``
    times (its row - the mean of the rows its concept's other values would have in that place)."""
    condition = encoder.encode(list(captions)).clone()
    for concept, value in combination.items():
        others = [v for v in CONCEPTS[concept] if v != value]
        for row, text in enumerate(captions):
            position = word_position(encoder.tokenizer, text, value)
            words = encoder.tokenizer.split(text)
            swapped = [" ".join(words[:position] + [other] + words[position + 1 :]) for other in others]
            rows = encoder.encode(swapped)[:, position]
            condition[row, position] += length * (condition[row, position] - rows.mean(0))
    return condition
