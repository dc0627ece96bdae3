"""A TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders") on a
layer's channel vectors: every spatial position of every image is one sample.

    codes = TopK(ReLU(W_enc (x - b_dec) + b_enc))       x_hat = W_dec codes + b_dec

The decoder's columns (the dictionary's directions) are kept at unit norm, so a code's size is the
feature's strength and two dictionaries compare by cosine. The encoder starts as the decoder's
transpose and ``b_dec`` at the samples' mean, as the paper does. Inputs are centred and scaled to
unit mean square per dimension before fitting (kept with the fit), so one learning rate suits every
layer. Plain TopK: no auxiliary loss for dead features; their share is reported instead.

Why our own: the maintained vision SAE library (``overcomplete``) pulls timm, torchvision and opencv
(torchvision another torch build on a CPU install); the language-model ones (``sae-lens``,
``sparsify``, ``dictionary-learning``) do not take diffusers features. This one is about 100 lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SAESettings:
    """expansion: features per input dimension; k: active features per sample; steps, batch_size,
    learning_rate: Adam on the mean squared reconstruction error; seed: initialisation and batches."""

    expansion: int = 4
    k: int = 8
    steps: int = 600
    batch_size: int = 1024
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("expansion", "k", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


class TopKSAE(nn.Module):
    def __init__(self, dim: int, num_features: int, k: int, generator: torch.Generator | None = None):
        super().__init__()
        if not 1 <= k <= num_features:
            raise ValueError(f"k must lie in [1, {num_features}] (the number of features), got {k}")
        self.k = k
        decoder = torch.nn.functional.normalize(torch.randn(dim, num_features, generator=generator), dim=0)
        self.decoder = nn.Parameter(decoder)  # (D, F): column f is feature f's direction
        self.encoder = nn.Parameter(decoder.T.clone())  # (F, D)
        self.encoder_bias = nn.Parameter(torch.zeros(num_features))
        self.decoder_bias = nn.Parameter(torch.zeros(dim))

    @property
    def num_features(self) -> int:
        return self.decoder.shape[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(M, D) -> (M, F) codes with at most k non-zero entries per row."""
        pre = torch.relu((x - self.decoder_bias) @ self.encoder.T + self.encoder_bias)
        top = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter_(1, top.indices, top.values)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.decoder.T + self.decoder_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.decoder.div_(self.decoder.norm(dim=0, keepdim=True).clamp_min(1e-12))


@dataclass
class FittedSAE:
    """An SAE with the centring and scale its inputs were given (apply both to new inputs)."""

    sae: TopKSAE
    mean: torch.Tensor  # (D,)
    scale: float

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.scale

    @torch.no_grad()
    def codes(self, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        """(M, D) raw features -> (M, F) codes."""
        return torch.cat([self.sae.encode(self.prepare(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])

    @property
    def directions(self) -> torch.Tensor:
        """(F, D) unit feature directions (in the scaled input space)."""
        return self.sae.decoder.detach().T


@dataclass(frozen=True)
class SAEStats:
    """explained_variance: 1 - residual / total sum of squares; mean_l0: active features per sample;
    dead_share: features active on no sample."""

    explained_variance: float
    mean_l0: float
    dead_share: float


def fit_sae(samples: torch.Tensor, settings: SAESettings) -> FittedSAE:
    """A TopK SAE of ``settings`` fitted on ``samples`` (M, D), deterministic for a seed on CPU."""
    if samples.ndim != 2 or len(samples) < 2:
        raise ValueError(f"samples must be (M >= 2, D), got {tuple(samples.shape)}")
    samples = samples.float()
    mean = samples.mean(dim=0)
    scale = float((samples - mean).square().mean().sqrt().clamp_min(1e-8))
    x = (samples - mean) / scale
    num_features = settings.expansion * x.shape[1]
    generator = torch.Generator().manual_seed(settings.seed)
    sae = TopKSAE(x.shape[1], num_features, min(settings.k, num_features), generator)
    optimizer = torch.optim.Adam(sae.parameters(), lr=settings.learning_rate)
    for _ in range(settings.steps):
        batch = x[torch.randint(len(x), (min(settings.batch_size, len(x)),), generator=generator)]
        loss = (sae(batch) - batch).square().sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sae.normalise_decoder()
    return FittedSAE(sae.eval(), mean, scale)


@torch.no_grad()
def sae_stats(fitted: FittedSAE, samples: torch.Tensor) -> SAEStats:
    x = fitted.prepare(samples)
    codes = fitted.codes(samples)
    residual = (fitted.sae.decode(codes) - x).square().sum()
    total = (x - x.mean(dim=0)).square().sum().clamp_min(1e-12)
    active = codes > 0
    return SAEStats(
        explained_variance=float(1 - residual / total),
        mean_l0=float(active.sum(dim=1).float().mean()),
        dead_share=float((~active.any(dim=0)).float().mean()),
    )
