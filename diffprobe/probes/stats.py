"""What makes a probe result believable: chance level, a significance test and an interval."""

from __future__ import annotations

import math

import torch


def majority_chance(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: list[int]) -> torch.Tensor:
    """(K,) accuracy on the test split of always answering the training split's majority class."""
    chance = []
    for k, classes in enumerate(num_classes):
        majority = torch.bincount(train_labels[:, k], minlength=classes).argmax()
        chance.append((test_labels[:, k] == majority).float().mean())
    return torch.stack(chance)


def binomial_p_value(correct: torch.Tensor, n: int, chance: torch.Tensor) -> torch.Tensor:
    """One-sided exact binomial test: P(X >= correct) for X ~ Binomial(n, chance), elementwise.

    Shapes broadcast (e.g. correct (P, K) with chance (K,)).
    """
    correct, chance = torch.broadcast_tensors(correct.double(), chance.double().clamp(1e-12, 1 - 1e-12))
    k = torch.arange(n + 1, dtype=torch.float64)
    log_pmf = (
        torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64))
        - torch.lgamma(k + 1)
        - torch.lgamma(n - k + 1)
        + k * chance.unsqueeze(-1).log()
        + (n - k) * torch.log1p(-chance.unsqueeze(-1))
    )
    tail = torch.where(k >= correct.unsqueeze(-1), log_pmf, torch.full_like(log_pmf, -math.inf))
    return tail.logsumexp(-1).exp().clamp(max=1.0).float()


def wilson_interval(correct: torch.Tensor, n: int, z: float = 1.96) -> tuple[torch.Tensor, torch.Tensor]:
    """Wilson score interval (95% by default) of an accuracy ``correct / n``."""
    p = correct.double() / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * torch.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half).float(), (centre + half).float()
