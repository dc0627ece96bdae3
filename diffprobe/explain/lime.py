"""LIME baseline (Ribeiro et al. 2016) for one denoising step, as the paper compares against.

Superpixels: quickshift on the decoded target x_{t-1}. K random on/off vectors z over the
superpixels (the first all on, as LIME does) switch superpixels of x_t off (set to 0); the UNet +
scheduler step runs on every perturbed x_t, and a scalar response of each prediction is explained
by a weighted ridge regression on z. The weights are LIME's kernel sqrt(exp(-d^2 / width^2)) of
the cosine distance d between z and the all-on vector. The coefficient of a superpixel is its
saliency; the top-k superpixels are what the paper shows.

Paper settings: K = 1000, kernel width 0.25, response = channel mean of the predicted x_{t-1}.

Quickshift defaults. diffprobe's models are small (16-64 px), where quickshift is sensitive:
``ratio = 0.2`` (LIME's own; colour distances in Lab, scaled by it, are comparable to pixel
distances), ``max_dist = 10`` and ``kernel_size = min(H, W) / 16`` clamped to [1, 4] (so the number
of segments stays about the same from 16 to 64 px; the cap 4 is LIME's own default and keeps
quickshift cheap on Stable Diffusion's 512-px decodes). On noisy mid-run targets (step 15 of 20)
they give about 10-40 segments at 16 and 32 px. Flat, clean images give fewer (3-10), because they
hold fewer regions. For Stable Diffusion, LIME's defaults ``kernel_size=4, max_dist=200,
ratio=0.2`` are the usual choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from diffprobe.choices import Response  # noqa: F401  (re-exported: the core's name for it)
from diffprobe.explain.model import ExplainModel
from diffprobe.explain.run import ExplainedStep, predict_prev
from diffprobe.explain.similarity import similarity_map

RESPONSES: tuple[str, ...] = ("mean", "similarity")


@dataclass
class Superpixels:
    """``segments`` (h, w) long at x_t's resolution, ids 0..S-1, every id present.
    ``image_segments`` (H, W) long at the decoded image's resolution with the same ids; -1 marks a
    quickshift segment that no x_t position kept (only when the decode is larger than x_t)."""

    segments: torch.Tensor
    image_segments: torch.Tensor

    @property
    def num_segments(self) -> int:
        return int(self.segments.max()) + 1


@dataclass
class LimeResult:
    """LIME saliency of one step, at x_t's resolution (h, w).

    ``coefficients`` (S,): ridge coefficient of each superpixel (the response change when it is on);
    ``saliency`` (h, w): the coefficient of each position's superpixel; ``top_segments``: the
    ``top_k`` superpixel ids with the largest coefficients, largest first; ``intercept``: the
    ridge intercept; ``score``: the weighted R^2 of the ridge fit on the samples (LIME's ``score``)."""

    segments: torch.Tensor
    image_segments: torch.Tensor
    coefficients: torch.Tensor
    saliency: torch.Tensor
    top_segments: list[int]
    intercept: float
    score: float
    num_samples: int
    kernel_width: float
    response: str

    @property
    def num_segments(self) -> int:
        return int(self.coefficients.numel())


def default_kernel_size(height: int, width: int) -> float:
    """Quickshift kernel for an (H, W) image: min(H, W) / 16 clamped to [1, 4] (see the module docstring)."""
    return float(min(max(min(height, width) / 16, 1.0), 4.0))


def superpixels(
    image: torch.Tensor,
    size: tuple[int, int],
    *,
    kernel_size: float | None = None,
    max_dist: float = 10.0,
    ratio: float = 0.2,
    sigma: float = 0.0,
    seed: int = 42,
) -> Superpixels:
    """Quickshift superpixels of ``image`` (C, H, W) in [-1, 1] (C = 1 or 3), mapped to ``size`` =
    (h, w) by nearest-neighbour downsampling; segments no position kept are dropped, the rest
    renumbered 0..S-1 in order of their quickshift id. ``seed``: quickshift's tie-breaking noise
    (scikit-image's default 42)."""
    from skimage.segmentation import quickshift  # only LIME needs scikit-image

    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"superpixels need one (C, H, W) image with 1 or 3 channels, got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    kernel_size = default_kernel_size(height, width) if kernel_size is None else kernel_size
    if kernel_size < 1:
        raise ValueError(f"quickshift kernel_size must be >= 1 (scikit-image's limit), got {kernel_size}")
    if max_dist <= 0:
        raise ValueError(f"quickshift max_dist must be positive, got {max_dist}")
    if not 0 <= ratio <= 1:
        raise ValueError(f"quickshift ratio must be in [0, 1], got {ratio}")
    if sigma < 0:
        raise ValueError(f"quickshift sigma must be >= 0, got {sigma}")
    pixels = ((image.detach().float().cpu() + 1) / 2).clamp(0, 1).expand(3, -1, -1)  # grayscale -> RGB for the Lab conversion
    labels = quickshift(
        pixels.permute(1, 2, 0).numpy().astype(np.float64), kernel_size=kernel_size, max_dist=max_dist, ratio=ratio, sigma=sigma, rng=seed
    )
    labels = torch.from_numpy(np.ascontiguousarray(labels)).long()
    low = labels if tuple(labels.shape) == tuple(size) else F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].long()
    kept, segments = torch.unique(low, return_inverse=True)
    lookup = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
    lookup[kept] = torch.arange(kept.numel())
    return Superpixels(segments=segments.view(size), image_segments=lookup[labels])


def lime_weights(samples: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """samples (K, S) in {0, 1} -> (K,) LIME kernel sqrt(exp(-d^2 / width^2)), d = cosine distance to
    the all-on vector = 1 - sqrt(|z| / S) (1 for the all-off z, as scikit-learn's cosine distance)."""
    on = samples.double().sum(1)
    distance = 1 - (on / samples.shape[1]).sqrt()
    return torch.exp(-(distance**2) / kernel_width**2).sqrt()


@dataclass
class RidgeFit:
    """Weighted ridge: ``coefficients`` (S,), ``intercept``, ``score`` = weighted R^2."""

    coefficients: torch.Tensor
    intercept: float
    score: float


def weighted_ridge(features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, alpha: float = 1.0) -> RidgeFit:
    """min_b,c sum_i w_i (y_i - x_i b - c)^2 + alpha |b|^2 in closed form (float64), as scikit-learn's
    ``Ridge(alpha, fit_intercept=True).fit(X, y, sample_weight=w)``: centre X and y on their weighted
    means (the unpenalised intercept drops out), solve (Xc^T W Xc + alpha I) b = Xc^T W yc.
    features (K, S), targets (K,), weights (K,)."""
    x, y, w = features.double(), targets.double(), weights.double()
    total = w.sum()
    x_mean, y_mean = (w[:, None] * x).sum(0) / total, (w * y).sum() / total
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ (w[:, None] * xc) + alpha * torch.eye(x.shape[1], dtype=torch.float64)
    coefficients = torch.linalg.solve(gram, xc.T @ (w * yc))
    intercept = y_mean - x_mean @ coefficients
    residual = (w * (y - x @ coefficients - intercept) ** 2).sum()
    spread = (w * yc**2).sum()
    # scikit-learn's r2_score convention for a constant target: 1 when fitted exactly, else 0.
    score = 1 - residual / spread if spread > 0 else torch.tensor(1.0 if residual <= 1e-24 else 0.0)
    return RidgeFit(coefficients=coefficients, intercept=float(intercept), score=float(score))


def _check_settings(step: ExplainedStep, response: str, num_samples: int, kernel_width: float, alpha: float, batch_size: int, top_k: int) -> None:
    """Every setting, checked before quickshift or a UNet call runs."""
    if response not in RESPONSES:
        raise ValueError(f"unknown LIME response {response!r}; choose one of {RESPONSES}")
    if num_samples < 2:
        raise ValueError(f"LIME needs num_samples >= 2 (the all-on sample plus perturbations), got {num_samples}; the paper uses 1000")
    if not (math.isfinite(kernel_width) and kernel_width > 0):
        raise ValueError(f"kernel_width must be a positive number, got {kernel_width}; the paper uses 0.25")
    if alpha <= 0:
        raise ValueError(f"the ridge penalty alpha must be positive (it keeps the fit solvable), got {alpha}; LIME uses 1")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if step.x_t.shape[0] != 1:
        raise ValueError(f"LIME explains one sample: step.x_t must be (1, C, h, w), got {tuple(step.x_t.shape)}")


def _responses(
    model: ExplainModel, step: ExplainedStep, samples: torch.Tensor, segments: torch.Tensor, response: str, batch_size: int, progress: bool
) -> torch.Tensor:
    """(num_samples,) float64: the model's response to x_t with each sample's superpixels switched off."""
    num_samples = samples.shape[0]
    responses = torch.empty(num_samples, dtype=torch.float64)
    for start in tqdm(range(0, num_samples, batch_size), desc="LIME", unit="batch", disable=not progress):
        # (B, 1, h, w) masks built per batch, so memory is bounded by batch_size, not num_samples
        batch = samples[start : start + batch_size, segments][:, None].to(device=model.device, dtype=step.x_t.dtype)
        predicted = predict_prev(model, step, step.x_t * batch)
        if response == "mean":
            values = predicted.float().mean(dim=(1, 2, 3))
        else:
            values = similarity_map(predicted, step.x_prev, "cosine").mean(dim=(1, 2))
        responses[start : start + batch.shape[0]] = values.double().cpu()
    if not torch.isfinite(responses).all():
        raise ValueError("the model gave non-finite outputs on perturbed inputs; LIME cannot fit them (check the model and step)")
    return responses


@torch.no_grad()
def lime_saliency(
    model: ExplainModel,
    step: ExplainedStep,
    *,
    num_samples: int = 1000,
    kernel_width: float = 0.25,
    response: Response = "mean",
    kernel_size: float | None = None,
    max_dist: float = 10.0,
    ratio: float = 0.2,
    sigma: float = 0.0,
    quickshift_seed: int = 42,
    alpha: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    top_k: int = 5,
    progress: bool = False,
) -> LimeResult:
    """LIME explanation of ``step`` (see the module docstring).

    ``response``: "mean" (paper) = mean over channels and positions of the predicted x_{t-1};
    "similarity" = per-position cosine similarity (over channels) of the predicted x_{t-1} to the
    true one, averaged over positions (with one channel it is only the sign agreement).
    ``kernel_size`` (None: from the image size), ``max_dist``, ``ratio``, ``sigma``,
    ``quickshift_seed``: quickshift's settings (the superpixels do not depend on ``seed``).
    ``alpha``: ridge penalty (LIME's 1). ``batch_size`` perturbed copies per UNet call (doubled
    under CFG). ``seed`` draws the on/off samples."""
    _check_settings(step, response, num_samples, kernel_width, alpha, batch_size, top_k)

    height, width = step.x_t.shape[-2:]
    pixels = superpixels(
        model.decode(step.x_prev)[0], (height, width), kernel_size=kernel_size, max_dist=max_dist, ratio=ratio, sigma=sigma, seed=quickshift_seed
    )
    count = pixels.num_segments
    samples = torch.randint(0, 2, (num_samples, count), generator=torch.Generator().manual_seed(seed))
    samples[0] = 1  # LIME's first sample is the unperturbed input

    responses = _responses(model, step, samples, pixels.segments, response, batch_size, progress)
    fit = weighted_ridge(samples, responses, lime_weights(samples, kernel_width), alpha=alpha)
    coefficients = fit.coefficients.float()
    top = torch.argsort(coefficients, descending=True, stable=True)[: min(top_k, count)]
    return LimeResult(
        segments=pixels.segments,
        image_segments=pixels.image_segments,
        coefficients=coefficients,
        saliency=coefficients[pixels.segments],
        top_segments=top.tolist(),
        intercept=fit.intercept,
        score=fit.score,
        num_samples=num_samples,
        kernel_width=kernel_width,
        response=response,
    )
