"""Linear probes fitted in batch: every (feature set, concept) at once, on the features' device.

Features come as ``(P, N, D)``: P feature sets of the same width (e.g. one layer at every t of the
grid), N examples. Labels are ``(N, K)`` class indices, one column per concept (real concepts and
control-task columns alike). Each (p, k) is an independent multinomial probe; they share the
matrix products:

- ``ridge``: closed-form ridge regression onto one-hot targets (one solve per feature set).
- ``logistic``: multinomial logistic regression with scikit-learn's objective (L2, ``C``), all
  probes optimised jointly by L-BFGS; the problems are independent and convex, so the joint
  optimum is each probe's own optimum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Method = Literal["logistic", "ridge"]


@dataclass
class ProbeFit:
    """correct (P, K) long: test examples classified right; n_test: how many test examples."""

    correct: torch.Tensor
    n_test: int

    @property
    def accuracy(self) -> torch.Tensor:
        return self.correct.float() / self.n_test


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean, unit variance per feature, with the training split's statistics. (P, N, D) each."""
    mean = train.mean(1, keepdim=True)
    std = train.std(1, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def _class_mask(num_classes: Sequence[int], device) -> torch.Tensor:
    """(K, C_max) bool: which padded class slots exist for each concept."""
    width = max(num_classes)
    return torch.arange(width, device=device).view(1, -1) < torch.tensor(list(num_classes), device=device).view(-1, 1)


def _predict(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(P, N, K, C_max) scores -> (P, N, K) predicted class, padded slots excluded."""
    return logits.masked_fill(~mask, float("-inf")).argmax(-1)


def _ridge_scores(xtr, ytr, xte, num_classes, ridge: float) -> torch.Tensor:
    mask = _class_mask(num_classes, xtr.device)
    onehot = F.one_hot(ytr, mask.shape[1]).float() * mask  # (N, K, C_max)
    targets = onehot.flatten(1)
    target_mean = targets.mean(0)
    centred = targets - target_mean
    n, d = xtr.shape[1], xtr.shape[2]
    if d <= n:  # primal: (X'X/n + rI) W = X'Y/n
        gram = xtr.mT @ xtr / n + ridge * torch.eye(d, device=xtr.device)
        weights = torch.linalg.solve(gram, xtr.mT @ centred / n)
    else:  # dual, cheaper when features outnumber examples: W = X'(XX'/n + rI)^-1 Y/n
        kernel = xtr @ xtr.mT / n + ridge * torch.eye(n, device=xtr.device)
        weights = xtr.mT @ torch.linalg.solve(kernel, centred.expand(xtr.shape[0], -1, -1) / n)
    scores = xte @ weights + target_mean
    return scores.view(*scores.shape[:2], *mask.shape)


def _logistic_scores(xtr, ytr, xte, num_classes, C: float, max_iter: int) -> torch.Tensor:
    mask = _class_mask(num_classes, xtr.device)
    p, n, d = xtr.shape
    k, width = mask.shape
    weights = torch.zeros(p, d, k * width, device=xtr.device, requires_grad=True)
    bias = torch.zeros(p, 1, k * width, device=xtr.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")
    targets = ytr.unsqueeze(0).expand(p, -1, -1)

    def closure():
        optimizer.zero_grad()
        logits = (xtr @ weights + bias).view(p, n, k, width).masked_fill(~mask, float("-inf"))
        nll = -logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).sum() / n
        # scikit-learn: sum of per-sample losses + ||W||^2 / (2C), here divided by n.
        loss = nll + (weights * mask.flatten()).square().sum() / (2 * C * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return (xte @ weights + bias).view(p, xte.shape[1], k, width)


@torch.no_grad()
def fit_probes(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: Sequence[int],
    method: Method = "logistic",
    ridge: float = 1e-1,
    C: float = 1.0,
    max_iter: int = 200,
) -> ProbeFit:
    """Fit and score all P x K probes. Features (P, N, D) float; labels (N, K) long."""
    if train_features.ndim != 3 or test_features.ndim != 3:
        raise ValueError(f"features must be (P, N, D); got {tuple(train_features.shape)} and {tuple(test_features.shape)}")
    if train_labels.shape[1] != len(num_classes):
        raise ValueError(f"labels have {train_labels.shape[1]} concept columns but num_classes has {len(num_classes)}")
    xtr, xte = standardize(train_features.float(), test_features.float())
    ytr, yte = train_labels.to(xtr.device), test_labels.to(xtr.device)
    if method == "ridge":
        scores = _ridge_scores(xtr, ytr, xte, num_classes, ridge)
    elif method == "logistic":
        scores = _logistic_scores(xtr, ytr, xte, num_classes, C, max_iter)
    else:
        raise ValueError(f"method must be 'logistic' or 'ridge', got {method!r}")
    predicted = _predict(scores, _class_mask(num_classes, xtr.device))
    correct = (predicted == yte.unsqueeze(0)).sum(1)
    return ProbeFit(correct=correct.cpu(), n_test=int(yte.shape[0]))
