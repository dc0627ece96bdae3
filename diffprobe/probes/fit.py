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

import torch
import torch.nn.functional as F
from einops import rearrange

from diffprobe.choices import Method  # noqa: F401  (re-exported: the core's name for it)


@dataclass
class ProbeFit:
    """hits (P, N_test, K) bool: which test example each probe classified right (what a paired
    test between two probes on the same test examples needs)."""

    hits: torch.Tensor

    @property
    def n_test(self) -> int:
        return int(self.hits.shape[1])

    @property
    def correct(self) -> torch.Tensor:
        """(P, K) long: test examples classified right."""
        return self.hits.sum(1)

    @property
    def accuracy(self) -> torch.Tensor:
        return self.correct.float() / self.n_test


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean, unit variance per feature, with the training split's statistics. (P, N, D) each."""
    mean = train.mean(1, keepdim=True)
    std = train.std(1, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def class_mask(num_classes: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """(K, C_max) bool: which padded class slots exist for each concept.

    Concepts with different class counts share one (K, C_max) score tensor; masked-out slots get
    -inf before a softmax or argmax, so a probe never predicts a class its concept does not have.
    """
    slots = torch.arange(max(num_classes), device=device)
    counts = torch.tensor(list(num_classes), device=device)
    return rearrange(slots, "c -> 1 c") < rearrange(counts, "k -> k 1")


def _predict(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(P, N, K, C_max) scores -> (P, N, K) predicted class, padded slots excluded."""
    return logits.masked_fill(~mask, float("-inf")).argmax(-1)


def ridge_weights(x: torch.Tensor, centred: torch.Tensor, ridge: float, dual: bool | None = None) -> torch.Tensor:
    """x (P, N, D) standardised features, centred (N, O) targets -> (P, D, O) ridge weights.

    Primal and dual give the same weights (push-through identity); ``dual=None`` takes the cheaper:
    the dual's N x N system when features outnumber examples, else the primal's D x D one.
    """
    n, d = x.shape[1], x.shape[2]
    if dual is None:
        dual = d > n
    if not dual:  # primal: (X'X/n + rI) W = X'Y/n
        gram = x.mT @ x / n + ridge * torch.eye(d, device=x.device)
        return torch.linalg.solve(gram, x.mT @ centred / n)
    # dual: W = X'(XX'/n + rI)^-1 Y/n
    kernel = x @ x.mT / n + ridge * torch.eye(n, device=x.device)
    return x.mT @ torch.linalg.solve(kernel, centred.expand(x.shape[0], -1, -1) / n)


def _ridge_scores(xtr, ytr, xte, num_classes, ridge: float) -> torch.Tensor:
    mask = class_mask(num_classes, xtr.device)
    onehot = F.one_hot(ytr, mask.shape[1]).float() * mask  # (N, K, C_max)
    targets = rearrange(onehot, "n k c -> n (k c)")  # all K concepts' classes in one solve
    target_mean = targets.mean(0)
    weights = ridge_weights(xtr, targets - target_mean, ridge)
    scores = xte @ weights + target_mean  # (P, N_test, K * C_max)
    return rearrange(scores, "p n (k c) -> p n k c", k=mask.shape[0])


def _logistic_scores(xtr, ytr, xte, num_classes, C: float, max_iter: int) -> torch.Tensor:
    weights, bias = _logistic_fit(xtr, ytr, num_classes, C, max_iter)
    k = len(num_classes)
    return rearrange(xte @ weights + bias, "p n (k c) -> p n k c", k=k)


def _logistic_fit(xtr, ytr, num_classes, C: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, D, K * C_max) weights and (P, 1, K * C_max) biases of every logistic probe."""
    mask = class_mask(num_classes, xtr.device)
    p, n, d = xtr.shape
    k, width = mask.shape
    weights = torch.zeros(p, d, k * width, device=xtr.device, requires_grad=True)
    bias = torch.zeros(p, 1, k * width, device=xtr.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weights, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe"
    )
    targets = ytr.unsqueeze(0).expand(p, -1, -1)

    def closure():
        optimizer.zero_grad()
        logits = rearrange(xtr @ weights + bias, "p n (k c) -> p n k c", k=k).masked_fill(~mask, float("-inf"))
        nll = -logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).sum() / n
        # scikit-learn: sum of per-sample losses + ||W||^2 / (2C), here divided by n.
        loss = nll + (weights * mask.flatten()).square().sum() / (2 * C * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weights.detach(), bias.detach()


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
    predicted = _predict(scores, class_mask(num_classes, xtr.device))
    return ProbeFit(hits=(predicted == yte.unsqueeze(0)).cpu())


@dataclass
class FittedProbe:
    """One concept's probe on one feature set: scores = ((x - mean) / std) @ weights + bias, with
    weights (D, C), bias (C,), mean and std (D,) from the training features."""

    weights: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) predicted class."""
        return (((features.float() - self.mean) / self.std) @ self.weights + self.bias).argmax(1)


@torch.no_grad()
def probe_weights(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, method: Method = "logistic", ridge: float = 1e-1, C: float = 1.0, max_iter: int = 200
) -> FittedProbe:
    """The weights of one probe, fitted as :func:`fit_probes` fits it: features (N, D), labels (N,)."""
    x = features.float()[None]
    mean = x.mean(1, keepdim=True)
    std = x.std(1, keepdim=True).clamp_min(1e-6)
    xs, y = (x - mean) / std, labels.reshape(-1, 1).to(x.device)
    if method == "ridge":
        onehot = F.one_hot(y[:, 0], num_classes).float()
        target_mean = onehot.mean(0)
        weights, bias = ridge_weights(xs, onehot - target_mean, ridge)[0], target_mean
    elif method == "logistic":
        weights, bias = _logistic_fit(xs, y, [num_classes], C, max_iter)
        weights, bias = weights[0], bias[0, 0]
    else:
        raise ValueError(f"method must be 'logistic' or 'ridge', got {method!r}")
    return FittedProbe(weights, bias, mean[0, 0], std[0, 0])
