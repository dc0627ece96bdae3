"""Exponential timestep sampling (R3): the same seeds sampled under uniform / early / latter (and
window) schedules, so what each stage of the reverse process carries can be compared side by side."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from diffprobe.diffusion import sampling
from diffprobe.explain.model import ExplainModel, Prompt


def _final_sample(unet, scheduler_config, seed: int, timesteps: list[int], condition, uncondition, guidance_scale: float) -> torch.Tensor:
    """The last x_{t-1} (1, C, h, w) of a seeded DDPM run on ``timesteps`` (model space, unclamped:
    latents must reach the VAE as they are). DDPM because DDIM cannot take arbitrary timesteps."""
    device = next(unet.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    records = sampling.denoise(
        unet,
        DDPMScheduler.from_config(scheduler_config),
        batch_size=1,
        generator=generator,
        timesteps=timesteps,
        condition=condition,
        uncondition=uncondition,
        guidance_scale=guidance_scale,
    )
    *_, last = records  # run the loop to its end
    return last.x_prev


@torch.no_grad()
def schedule_images(
    model: ExplainModel, prompt: Prompt | None, seeds: list[int], schedules: dict[str, list[int]]
) -> dict[str, torch.Tensor]:
    """Decoded final images (len(seeds), 3 or 1, H, W) in [-1, 1] per schedule; each seed's initial
    noise is the same under every schedule. Works for pixel models and Stable Diffusion alike."""
    condition = None if prompt is None else prompt.condition
    uncondition = None if prompt is None else prompt.uncondition

    def final(seed: int, timesteps: list[int]) -> torch.Tensor:
        return model.decode(
            _final_sample(model.unet, model.scheduler_config, seed, timesteps, condition, uncondition, model.guidance_scale)
        ).cpu()

    return {name: torch.cat([final(seed, timesteps) for seed in seeds]) for name, timesteps in schedules.items()}


@torch.no_grad()
def compare_schedules(
    unet,
    scheduler,
    seeds: list[int],
    schedules: dict[str, list[int]],
    condition: torch.Tensor | None = None,
    uncondition: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Final images (len(seeds), C, H, W) in [-1, 1] per schedule of a pixel-space UNet (see
    :func:`schedule_images` for any ExplainModel). ``condition`` / ``uncondition``: (1, L, D)."""

    def final(seed: int, timesteps: list[int]) -> torch.Tensor:
        return _final_sample(unet, scheduler.config, seed, timesteps, condition, uncondition, guidance_scale).float().clamp(-1, 1).cpu()

    return {name: torch.cat([final(seed, timesteps) for seed in seeds]) for name, timesteps in schedules.items()}
