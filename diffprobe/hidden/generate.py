"""The held-out prompts sampled plainly and under each intervention, from the same noise.

Every variant of image i starts from seed ``seed + i`` and draws the same noise at every step
(:func:`diffprobe.intervene.branching.branched_finals`, all branches from the first step), so the
variants differ only through the intervention. Steering adds, at one layer and every timestep, the
sum of each held-out value's probe direction (target against the mean of the others, in spreads of
the probe set's features along it): both values of the combination pushed at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffprobe.diffusion.ddpm import sampling_scheduler
from diffprobe.diffusion.sampling import guided_output
from diffprobe.hidden.prompts import HeldoutPrompts, moved_along_values, over_prompted
from diffprobe.intervene.branching import Branch, branched_finals
from diffprobe.intervene.steer import SteeringDirection, shifted_output

VARIANTS = ("plain", "over_prompting", "embedding_intervention", "steering")


@dataclass(frozen=True)
class InterventionSettings:
    """How strong each intervention is: ``over_prompt_scale`` (the words' rows times it),
    ``embedding_length`` (steps along the value direction), ``steer_alpha`` (spreads per value)
    at ``steer_layer`` (probe directions fitted at ``steer_t``)."""

    over_prompt_scale: float = 2.0
    embedding_length: float = 1.0
    steer_alpha: float = 8.0
    steer_layer: str = "up_blocks.1"
    steer_t: int = 100


def steering_shift(directions: Sequence[SteeringDirection], alpha: float) -> torch.Tensor:
    """(D,) the layer shift: alpha spreads along each direction, summed."""
    layers = {d.layer for d in directions}
    if len(layers) != 1:
        raise ValueError(f"steering directions of one shift live in one layer, got {sorted(layers)}")
    return sum((alpha * d.spread * d.unit for d in directions), torch.zeros_like(directions[0].unit))


@torch.no_grad()
def variant_images(
    model, prompts: HeldoutPrompts, settings: InterventionSettings, shift: torch.Tensor | None, timesteps: Sequence[int], *,
    seed: int = 0, batch_size: int = 64,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Variant name -> final images (N, C, H, W) in [-1, 1] of the held-out prompts. ``model``: a
    :class:`~diffprobe.diffusion.model.DiffusionModel` (conditional); ``shift``: the steering
    shift (None: no steering variant)."""
    encoder, unet = model.caption_encoder, model.unet
    words = list(prompts.combination.values())
    conditions = {
        "plain": encoder.encode(list(prompts.captions)),
        "over_prompting": over_prompted(encoder, prompts.captions, words, settings.over_prompt_scale),
        "embedding_intervention": moved_along_values(encoder, prompts.captions, prompts.combination, settings.embedding_length),
    }
    scheduler = sampling_scheduler(model.scheduler.config, "ddpm", timesteps)
    size = unet.config.sample_size
    shape = (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    names = [n for n in VARIANTS if n != "steering" or shift is not None]
    images: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for start in range(0, len(prompts.captions), batch_size):
        stop = min(start + batch_size, len(prompts.captions))
        batch = {name: condition[start:stop] for name, condition in conditions.items()}
        finals = _batch_finals(model, batch, settings.steer_layer, shift, scheduler, shape, range(seed + start, seed + stop))
        for name, final in zip(names, finals):
            images[name].append(final.clamp(-1, 1).cpu())
    return {name: torch.cat(parts) for name, parts in images.items()}


def _batch_finals(model, conditions: dict[str, torch.Tensor], layer: str, shift: torch.Tensor | None, scheduler, shape, seeds) -> list[torch.Tensor]:
    """One batch's finals: plain, over-prompted, moved along the values, then steered (with a shift)."""
    unet = model.unet
    uncondition = model.caption_encoder.unconditional(len(seeds))

    def guided(condition: torch.Tensor):
        return lambda x, t, index: guided_output(unet, x, t, condition, uncondition, model.guidance_scale)

    plain = guided(conditions["plain"])
    branches = [Branch(0, guided(conditions[n])) for n in ("over_prompting", "embedding_intervention")]
    if shift is not None:

        def steered(x, t, index, moved: torch.Tensor = shift):
            with shifted_output(unet, layer, moved):
                return plain(x, t, index)

        branches.append(Branch(0, steered))
    trunk, finals = branched_finals(plain, branches, scheduler, shape=shape, seeds=seeds, device=next(unet.parameters()).device)
    return [trunk, *finals]
