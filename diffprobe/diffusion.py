"""Noise maths on top of diffusers schedulers: training targets, x0 recovery, timestep buckets.

Convention everywhere in diffprobe: ``t`` is the *training* timestep index in ``[0, T)``, with
``t = 0`` the clean end and ``t = T - 1`` pure noise, exactly as diffusers' ``DDPMScheduler``
counts it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffprobe.choices import Schedule  # noqa: F401  (re-exported: the core's name for it)

PredictionType = Literal["epsilon", "v_prediction", "sample"]
BetaSchedule = Literal["linear", "cosine", "scaled_linear"]

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


def sampling_scheduler(train_scheduler: DDPMScheduler, kind: Literal["ddpm", "ddim"]) -> DDPMScheduler | DDIMScheduler:
    """A fresh scheduler for sampling, sharing the training noise schedule (never the same object,
    so ``set_timesteps`` during sampling cannot disturb training)."""
    if kind == "ddpm":
        return DDPMScheduler.from_config(train_scheduler.config)
    if kind == "ddim":
        return DDIMScheduler.from_config(train_scheduler.config)
    raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {kind!r}")


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


# ---- timestep schedules (Park, Ju & Lee 2024: exponential timestep sampling) ----------------------


def _exponential_base(num_train_timesteps: int, num_steps: int, lam: float) -> float:
    """alpha = exp(ln(T) / (N + lambda)), so that alpha ** (N + lambda) = T."""
    return math.exp(math.log(num_train_timesteps) / (num_steps + lam))


def early_timesteps(num_train_timesteps: int = 1000, num_steps: int = 30, lam: float = 60) -> list[int]:
    """N steps packed at high noise ("semantic" stage), descending.

    t_i = T - floor(alpha ** (i + 1 + lambda)) for i = 0..N-1; then T - 1 is prepended and the last
    value dropped: the paper's early schedule (Park, Ju & Lee 2024).
    """
    alpha = _exponential_base(num_train_timesteps, num_steps, lam)
    values = [num_train_timesteps - _floor(alpha ** (i + 1 + lam)) for i in range(num_steps)]
    return _checked([num_train_timesteps - 1, *values[:-1]], "early", num_steps, lam)


def latter_timesteps(num_train_timesteps: int = 1000, num_steps: int = 30, lam: float = 60) -> list[int]:
    """N steps packed at low noise ("delicate" stage), descending.

    t_i = floor(alpha ** (i + 1 + lambda)) for i = 0..N-1, sorted descending, a value equal to T
    replaced by T - 1.
    """
    alpha = _exponential_base(num_train_timesteps, num_steps, lam)
    values = sorted((_floor(alpha ** (i + 1 + lam)) for i in range(num_steps)), reverse=True)
    return _checked([min(v, num_train_timesteps - 1) for v in values], "latter", num_steps, lam)


def _floor(x: float) -> int:
    """floor that keeps exact powers exact (1000 ** (1/3) ** 3 is 999.99999...)."""
    return math.floor(x + 1e-9)


def _checked(timesteps: list[int], kind: str, num_steps: int, lam: float) -> list[int]:
    if any(a <= b for a, b in zip(timesteps, timesteps[1:])) or min(timesteps) < 0:
        raise ValueError(
            f"the {kind} schedule with N = {num_steps}, lambda = {lam} repeats timesteps ({timesteps}); "
            "use fewer steps or a larger lambda (the paper: N = 30, lambda = 60)"
        )
    return timesteps


def uniform_timesteps(scheduler, num_steps: int = 30) -> list[int]:
    """The scheduler's own spacing for ``num_steps`` steps (on a copy: ``scheduler`` is untouched)."""
    copy = type(scheduler).from_config(scheduler.config)
    copy.set_timesteps(num_steps)
    return [int(t) for t in copy.timesteps]


def window_timesteps(
    num_train_timesteps: int = 1000, uniform_steps: int = 10, window_steps: int = 20, start: int = 400, width: int = 200
) -> list[int]:
    """``uniform_steps`` evenly spread steps plus ``window_steps`` packed in [start, start + width],
    descending and unique: slide ``start`` across [0, T) to see what each stage contributes."""
    if not 0 <= start < start + width <= num_train_timesteps:
        raise ValueError(f"window [{start}, {start + width}] must lie inside [0, {num_train_timesteps}]")
    spread = [round(x) for x in torch.linspace(num_train_timesteps - 1, 0, uniform_steps).tolist()]
    packed = [round(x) for x in torch.linspace(min(start + width, num_train_timesteps - 1), start, window_steps).tolist()]
    return sorted(set(spread) | set(packed), reverse=True)


def schedule_timesteps(kind: Schedule, scheduler, num_steps: int = 30, lam: float = 60, **window) -> list[int]:
    """The timesteps of one named schedule for ``scheduler`` (T from its config)."""
    T = scheduler.config.num_train_timesteps
    if kind == "uniform":
        return uniform_timesteps(scheduler, num_steps)
    if kind == "early":
        return early_timesteps(T, num_steps, lam)
    if kind == "latter":
        return latter_timesteps(T, num_steps, lam)
    if kind == "window":
        return window_timesteps(T, **window)
    raise ValueError(f"schedule must be 'uniform', 'early', 'latter' or 'window', got {kind!r}")
