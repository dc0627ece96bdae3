"""What makes a probe result believable: chance level, a significance test and an interval."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.stats import binom


def chance_level(test_labels: torch.Tensor, num_classes: Sequence[int]) -> torch.Tensor:
    """(K,) the share of each concept's most frequent class in the test split.

    That is the best accuracy any constant answer reaches on the test split, so no probe is called
    above chance for answering one class. (Scoring the training split's majority class instead can
    fall below 1/K when that class is rare in the test split, and then a constant answer looks
    "significant".) test_labels: (N, K) class indices.
    """
    counts = [torch.bincount(test_labels[:, k], minlength=classes) for k, classes in enumerate(num_classes)]
    return torch.stack([c.max() for c in counts]).float() / test_labels.shape[0]


def binomial_p_value(correct: torch.Tensor, n: int, chance: torch.Tensor) -> torch.Tensor:
    """One-sided exact binomial test: P(X >= correct) for X ~ Binomial(n, chance), elementwise.

    Shapes broadcast (e.g. correct (P, K) with chance (K,)).
    """
    correct, chance = torch.broadcast_tensors(correct.double(), chance.double())
    # binom.sf(k) is P(X > k), so P(X >= correct) is sf(correct - 1); scipy keeps the tail exact
    # far below float64's 1 - p resolution (p-values of 1e-30 stay 1e-30, not 0).
    tail = binom.sf(correct.cpu().numpy() - 1, n, chance.cpu().numpy())
    return torch.as_tensor(tail, dtype=torch.float64).reshape(correct.shape)  # float32 would round tails below ~1e-45 to 0


def wilson_interval(correct: torch.Tensor, n: int, z: float = 1.96) -> tuple[torch.Tensor, torch.Tensor]:
    """Wilson score interval (95% by default) of an accuracy ``correct / n``."""
    p = correct.double() / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * torch.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half).float(), (centre + half).float()
