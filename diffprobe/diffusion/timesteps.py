"""Timestep grids and schedules, in training indices t (0 = the clean end, T - 1 = pure noise).

- The probe grid every probe set, intervention and figure shares (dense at small t), and the one
  check that a grid fits a model's T.
- The sampling schedules of Park, Ju & Lee (2024): exponential "early" (dense at high noise) and
  "latter" (dense at low noise), the scheduler's uniform spacing, and sliding windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffprobe.choices import Schedule

# Dense at small t, where fine detail is decided; spans [0, T).
DEFAULT_TIMESTEPS_1000 = (0, 10, 25, 50, 100, 150, 200, 300, 400, 500, 600, 700, 800, 900, 999)


def scaled_timesteps(grid_1000: Sequence[int], num_train_timesteps: int) -> list[int]:
    """A t grid written for T = 1000, scaled to this T: rounded, capped at T - 1, unique, ascending."""
    T = num_train_timesteps
    return sorted({min(T - 1, round(t * T / 1000)) for t in grid_1000})


def default_timesteps(num_train_timesteps: int) -> list[int]:
    """The probe set's default grid (``DEFAULT_TIMESTEPS_1000``) for this T."""
    return scaled_timesteps(DEFAULT_TIMESTEPS_1000, num_train_timesteps)


def check_timesteps(timesteps: Sequence[int], num_train_timesteps: int, who: str) -> None:
    """ValueError naming ``who`` when a timestep lies outside [0, T): the one range check of every
    t grid (probe sets, recorders, commands)."""
    outside = sorted({int(t) for t in timesteps if not 0 <= t < num_train_timesteps})
    if outside:
        raise ValueError(
            f"{who} timesteps {outside} are outside [0, {num_train_timesteps}): the model has {num_train_timesteps} training "
            "timesteps (t = 0 is the clean end)"
        )



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
