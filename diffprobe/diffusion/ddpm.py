"""Noise maths on top of diffusers schedulers: training targets, x0 recovery, timestep buckets.

Convention everywhere in diffprobe: ``t`` is the *training* timestep index in ``[0, T)``, with
``t = 0`` the clean end and ``t = T - 1`` pure noise, exactly as diffusers' ``DDPMScheduler``
counts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffprobe.choices import BetaSchedule, PredictionType, Sampler

# diffusers' name for the cosine schedule of Nichol & Dhariwal (2021).
_DIFFUSERS_BETA_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2", "scaled_linear": "scaled_linear"}


def build_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: BetaSchedule = "linear",
    prediction_type: PredictionType = "epsilon",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> DDPMScheduler:
    """A ``DDPMScheduler`` with DDPM's defaults (Ho et al. 2020), as ``google/ddpm-cifar10-32`` uses."""
    if beta_schedule not in _DIFFUSERS_BETA_SCHEDULE:
        raise ValueError(f"beta_schedule must be one of {sorted(_DIFFUSERS_BETA_SCHEDULE)}, got {beta_schedule!r}")
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}")
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=_DIFFUSERS_BETA_SCHEDULE[beta_schedule],
        beta_start=beta_start,
        beta_end=beta_end,
        prediction_type=prediction_type,
        variance_type="fixed_large",
        clip_sample=True,
    )


def sampling_scheduler(
    train: DDPMScheduler | Mapping[str, Any], kind: Sampler = "ddpm", timesteps: Sequence[int] | None = None
) -> DDPMScheduler | DDIMScheduler:
    """A fresh scheduler for sampling on the training noise schedule (``train``: the training
    scheduler or its config), never the same object, so ``set_timesteps`` during sampling cannot
    disturb training; set to ``timesteps`` (descending) when given."""
    config = train.config if isinstance(train, (DDPMScheduler, DDIMScheduler)) else dict(train)
    if kind == "ddpm":
        scheduler = DDPMScheduler.from_config(config)
    elif kind == "ddim":
        scheduler = DDIMScheduler.from_config(config)
    else:
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {kind!r}")
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=[int(t) for t in timesteps])
    return scheduler


def _alpha_sigma(scheduler: DDPMScheduler, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), shaped (B, 1, 1, 1) to broadcast over ``like``."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)
    alpha_bar = alphas_cumprod[timesteps.long()].view(-1, *([1] * (like.ndim - 1)))
    return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()


def training_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict for ``x_t = add_noise(x0, noise, t)``, per ``prediction_type``.

    Shapes: x0, noise (B, C, H, W); timesteps (B,). Returns (B, C, H, W).
    """
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def predict_x0(scheduler: DDPMScheduler, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The model's estimate of the clean image, x0_hat, from its output at (x_t, t).

    Shapes: model_output, x_t (B, C, H, W); timesteps (B,). Returns float32 (B, C, H, W).
    """
    alpha, sigma = _alpha_sigma(scheduler, timesteps, x_t)
    out, x_t = model_output.float(), x_t.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x_t - sigma * out) / alpha
    if kind == "sample":
        return out
    if kind == "v_prediction":
        return alpha * x_t - sigma * out
    raise ValueError(f"unsupported prediction_type {kind!r}")


def per_sample_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample: (B, C, H, W) x 2 -> (B,), computed in float32."""
    return (prediction.float() - target.float()).square().mean(dim=tuple(range(1, prediction.ndim)))


def timestep_buckets(timesteps: torch.Tensor, num_train_timesteps: int, num_buckets: int) -> torch.Tensor:
    """Bucket index in ``[0, num_buckets)`` of each training timestep (equal-width buckets over [0, T))."""
    return (timesteps.long() * num_buckets) // num_train_timesteps


def bucket_bounds(num_train_timesteps: int, num_buckets: int) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` timestep of each bucket, matching :func:`timestep_buckets`."""
    if not 1 <= num_buckets <= num_train_timesteps:
        raise ValueError(f"num_buckets must be in [1, {num_train_timesteps}], got {num_buckets}")
    bounds = []
    for b in range(num_buckets):
        first = -(-b * num_train_timesteps // num_buckets)  # ceil(b * T / K)
        last = -(-(b + 1) * num_train_timesteps // num_buckets) - 1
        bounds.append((first, last))
    return bounds
