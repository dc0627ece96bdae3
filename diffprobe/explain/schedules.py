"""Exponential timestep sampling (R3): the same seeds sampled under uniform / early / latter
schedules, so what each stage of the reverse process carries can be compared side by side."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from diffprobe import diffusion, sampling


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
    """Final images (len(seeds), C, H, W) in [-1, 1] per schedule. Each seed's initial noise is the
    same under every schedule; sampling uses a DDPMScheduler on the given timesteps (DDIM cannot
    take arbitrary timesteps). ``condition`` / ``uncondition``: (1, L, D) caption embeddings."""
    device = next(unet.parameters()).device
    results = {}
    for name, timesteps in schedules.items():
        images = []
        for seed in seeds:
            generator = torch.Generator(device=device).manual_seed(seed)
            images.append(
                sampling.generate(
                    unet,
                    DDPMScheduler.from_config(scheduler.config),
                    batch_size=1,
                    generator=generator,
                    timesteps=timesteps,
                    condition=condition,
                    uncondition=uncondition,
                    guidance_scale=guidance_scale,
                )[0].float().cpu()
            )
        results[name] = torch.stack(images)
    return results


def paper_schedules(scheduler, num_steps: int = 30, lam: float = 60) -> dict[str, list[int]]:
    """uniform, early and latter with the paper's defaults (N = 30, lambda = 60)."""
    return {kind: diffusion.schedule_timesteps(kind, scheduler, num_steps, lam) for kind in ("uniform", "early", "latter")}
