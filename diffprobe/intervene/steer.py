"""Probe-direction steering (after Chen et al. 2023, "Beyond Surface Statistics"): is a decodable
direction also used?

A linear probe for (layer, t, concept) scores value c as w_c . (f - mean) / std, f the layer's
pooled feature. The direction that raises target over source fastest, in the layer's own units, is
d = (w_target - w_source) / std. Steering adds alpha * s * d_hat to the layer's output at every
position (so the pooled feature moves by exactly that) during a window of timesteps; s is the
spread (standard deviation) of the probe set's features along d_hat, so alpha counts typical
distances along the direction. The control adds a random direction of the same length: if the
probe direction flips the reader's value and the random one does not, the model uses it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from diffprobe.capture.layers import find_layers
from diffprobe.choices import Method, Pool
from diffprobe.diffusion.ddpm import sampling_scheduler
from diffprobe.diffusion.sampling import guided_output
from diffprobe.intervene.branching import Branch, branched_finals, first_step_below
from diffprobe.intervene.switch import encode_captions
from diffprobe.probes.fit import probe_weights


@dataclass(frozen=True)
class SteeringDirection:
    """A unit direction (D,) in a layer's channel space and the features' spread along it."""

    layer: str
    t: int
    concept: str
    source: str | None
    target: str
    unit: torch.Tensor
    spread: float
    probe_accuracy: float  # the refitted probe on the probe set's test split
    pool: Pool = "mean"  # how the features were pooled: the unit lives in that space
    method: Method = "logistic"  # how the probe was fitted

    def random_control(self, seed: int = 0) -> torch.Tensor:
        """A random unit direction of the same space (seeded): the control."""
        generator = torch.Generator().manual_seed(seed)
        vector = torch.randn(self.unit.shape, generator=generator)
        return vector / vector.norm()


def probe_direction(
    features: torch.Tensor,
    labels: torch.Tensor,
    values: Sequence[str],
    *,
    layer: str,
    t: int,
    concept: str,
    target: str,
    source: str | None = None,
    train: torch.Tensor | None = None,
    test: torch.Tensor | None = None,
    method: Method = "logistic",
    pool: Pool = "mean",
) -> SteeringDirection:
    """The class-difference direction of a probe fitted on pooled ``features`` (N, D) with
    ``labels`` (N,) of one concept (fitted on ``train`` indices, scored on ``test``). Without
    ``source``, target against the mean of the other values."""
    values = list(values)
    if target not in values:
        raise ValueError(f"target {target!r} is not a value of {concept!r}; its values are {values}")
    if source is not None and source not in values:
        raise ValueError(f"source {source!r} is not a value of {concept!r}; its values are {values}")
    if source == target:
        raise ValueError(f"source and target are both {target!r}; steer towards a different value")
    train = torch.arange(len(features)) if train is None else train
    fit = probe_weights(features[train], labels[train], len(values), method=method)
    weights = fit.weights / fit.std[:, None]  # (D, C) in the layer's own units
    into = values.index(target)
    if source is None:
        others = [c for c in range(len(values)) if c != into]
        direction = weights[:, into] - weights[:, others].mean(1)
    else:
        direction = weights[:, into] - weights[:, values.index(source)]
    unit = direction / direction.norm().clamp_min(1e-12)
    spread = float((features.float() @ unit).std())
    accuracy = float("nan")
    if test is not None and len(test):
        accuracy = float((fit.predict(features[test]) == labels[test]).float().mean())
    return SteeringDirection(layer, int(t), concept, source, target, unit, spread, accuracy, pool, method)


def spatial_shift(shift: torch.Tensor, pool: Pool, like: torch.Tensor) -> torch.Tensor:
    """A shift (D,) in pooled-feature space as a (1, C, H, W) map over ``like``'s positions: the
    same (C,) everywhere for ``mean``; for ``grid2`` / ``grid4`` each cell's (C,) over that cell,
    so pooling the shifted map moves the pooled features by exactly ``shift``."""
    channels, height, width = like.shape[1:]
    cells = {"mean": 1, "grid2": 2, "grid4": 4}[pool]
    grid = shift.to(like).view(channels, cells, cells)[None]
    return torch.nn.functional.interpolate(grid, size=(height, width), mode="nearest") if cells > 1 else grid


@contextmanager
def shifted_output(unet: nn.Module, layer: str, shift: torch.Tensor, pool: Pool = "mean") -> Iterator[None]:
    """Add ``shift`` (D,), a direction in ``pool``'s feature space (:func:`spatial_shift`), to
    ``layer``'s output while inside. A down block returns (h, skips) with h also its last skip: both
    get the shift, so the skip path sees it too."""
    module = find_layers(unet, [layer])[layer]

    def hook(module, args, output):
        if isinstance(output, tuple):
            hidden, skips = output[0], output[1] if len(output) > 1 else None
            moved = hidden + spatial_shift(shift, pool, hidden)
            if isinstance(skips, tuple):
                skips = tuple(moved if s is hidden else s for s in skips)
                return (moved, skips, *output[2:])
            return (moved, *output[1:])
        return output + spatial_shift(shift, pool, output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class SteerSetting:
    """One steered variant: ``alpha`` spreads along ``direction`` ("probe" or "random") for the
    timesteps in [window_start, window_end)."""

    direction: str
    alpha: float
    window_start: int
    window_end: int


def steered_finals(
    unet,
    scheduler_config: dict,
    steering: SteeringDirection,
    settings: Sequence[SteerSetting],
    timesteps: Sequence[int],
    *,
    seeds: Sequence[int],
    shape: tuple[int, ...],
    condition: torch.Tensor | None = None,
    uncondition: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    control_seed: int = 0,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(unsteered finals, finals per setting), each (B, *shape) in model space."""
    device = next(unet.parameters()).device
    scheduler = sampling_scheduler(scheduler_config, "ddpm", timesteps)
    steps = [int(t) for t in scheduler.timesteps]
    directions = {"probe": steering.unit, "random": steering.random_control(control_seed)}
    batch = len(seeds)
    cond = None if condition is None else condition.expand(batch, -1, -1)
    uncond = None if uncondition is None else uncondition.expand(batch, -1, -1)

    def plain(x, t, index):
        return guided_output(unet, x, t, cond, uncond, guidance_scale)

    def steered(setting: SteerSetting):
        shift = setting.alpha * steering.spread * directions[setting.direction].to(device)

        def output(x, t, index):
            if not setting.window_start <= t < setting.window_end:
                return plain(x, t, index)
            with shifted_output(unet, steering.layer, shift, steering.pool):
                return plain(x, t, index)

        return output

    branches = []
    for setting in settings:
        if setting.direction not in directions:
            raise ValueError(f"direction must be 'probe' or 'random', got {setting.direction!r}")
        start = first_step_below(steps, setting.window_end)  # the first step inside the window
        branches.append(Branch(start if setting.alpha != 0 else len(steps), steered(setting)))
    return branched_finals(plain, branches, scheduler, shape=shape, seeds=seeds, device=device, dtype=next(unet.parameters()).dtype)


@torch.no_grad()
def steered_images(
    model, steering: SteeringDirection, settings: Sequence[SteerSetting], timesteps: Sequence[int], *, num_images: int,
    captions: Sequence[str] | None = None, seed: int = 0, batch_size: int = 64, control_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Decoded finals in [-1, 1]: unsteered (N, C, H, W) and steered (S, N, C, H, W), one per
    setting; image i uses seed ``seed + i`` (and ``captions[i]`` for a conditional model)."""
    condition = uncondition = None
    if model.conditional:
        if captions is None or len(captions) != num_images:
            raise ValueError("a conditional model needs one caption per steered image")
        condition = encode_captions(model, captions)
        uncondition = model.prompt(captions[0]).uncondition
    size = model.unet.config.sample_size
    shape = (model.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    plain, steered = [], []
    for start in range(0, num_images, batch_size):
        stop = min(start + batch_size, num_images)
        trunk, finals = steered_finals(
            model.unet, model.scheduler_config, steering, settings, timesteps, seeds=range(seed + start, seed + stop), shape=shape,
            condition=None if condition is None else condition[start:stop], uncondition=uncondition,
            guidance_scale=model.guidance_scale, control_seed=control_seed,
        )  # fmt: skip
        plain.append(model.decode(trunk).cpu())
        steered.append(torch.stack([model.decode(x).cpu() for x in finals]))
    return torch.cat(plain), torch.cat(steered, dim=1)
