"""The step every explanation tool explains: step ``index`` of a seeded DDIM sampling run.

Why DDIM (eta = 0): the tools compare the scheduler output of a *perturbed* x_t with the run's
true x_{t-1}. A deterministic step makes that difference come from the perturbation alone; with
an ancestral (DDPM) step every masked copy would also get its own fresh noise. (The paper's Stable
Diffusion scheduler, PNDM, is deterministic too; DDIM is built from any model's noise schedule.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from diffprobe.diffusion import sampling
from diffprobe.explain.model import ExplainModel, Prompt


@dataclass
class ExplainedStep:
    """Step ``index`` (0-based) of a ``len(timesteps)``-step run. Tensors are (1, C, h, w) in
    model space (pixels, or latents for Stable Diffusion)."""

    index: int
    t: int
    timesteps: list[int]
    seed: int
    x_t: torch.Tensor
    x_prev: torch.Tensor
    x0_hat: torch.Tensor
    final: torch.Tensor
    prompt: Prompt | None
    scheduler: Any  # the DDIM scheduler of the run (stateless per step), for predict_prev

    def describe(self) -> str:
        return f"step {self.index} of {len(self.timesteps)} (t = {self.t}), seed {self.seed}"


def check_step(index: int, num_steps: int) -> None:
    if num_steps < 1:
        raise ValueError(f"a sampling run needs at least 1 step, got {num_steps}")
    if not 0 <= index < num_steps:
        raise ValueError(f"step {index} is outside the run: a {num_steps}-step run has steps 0..{num_steps - 1} (0 = most noisy); choose --step in that range")


def explain_step(model: ExplainModel, *, prompt: Prompt | None = None, seed: int = 0, num_inference_steps: int = 20, step: int = 15) -> ExplainedStep:
    """Run the seeded DDIM sampling loop to the end, keeping step ``step``'s input and output."""
    check_step(step, num_inference_steps)
    return explain_steps(model, prompt=prompt, seed=seed, num_inference_steps=num_inference_steps)[step]


@torch.no_grad()
def explain_steps(model: ExplainModel, *, prompt: Prompt | None = None, seed: int = 0, num_inference_steps: int = 20) -> list[ExplainedStep]:
    """Every step of one seeded DDIM sampling run (one loop, one ExplainedStep per step)."""
    check_step(0, num_inference_steps)
    scheduler = model.ddim()
    generator = torch.Generator(device=model.device).manual_seed(seed)
    records = list(
        sampling.denoise(
            model.unet,
            scheduler,
            batch_size=1,
            num_inference_steps=num_inference_steps,
            generator=generator,
            condition=None if prompt is None else prompt.condition,
            uncondition=None if prompt is None else prompt.uncondition,
            guidance_scale=model.guidance_scale,
        )
    )
    timesteps = [int(t) for t in scheduler.timesteps]
    return [
        ExplainedStep(
            index=record.index,
            t=record.t,
            timesteps=timesteps,
            seed=seed,
            x_t=record.x_t,
            x_prev=record.x_prev,
            x0_hat=record.x0_hat,
            final=records[-1].x_prev,
            prompt=prompt,
            scheduler=scheduler,
        )
        for record in records
    ]


def predict_prev(model: ExplainModel, step: ExplainedStep, x: torch.Tensor) -> torch.Tensor:
    """The scheduler output x_{t-1} (B, C, h, w) for a batch of (perturbed) inputs x at the step's t."""
    output = model.guided(x, step.t, step.prompt)
    return step.scheduler.step(output, step.t, x).prev_sample


def normalise_map(saliency: torch.Tensor) -> torch.Tensor:
    """ReLU then min-max to [0, 1] (a constant map becomes zeros), as the paper shows its maps."""
    saliency = saliency.detach().float().clamp_min(0)
    low, high = saliency.min(), saliency.max()
    return (saliency - low) / (high - low).clamp_min(1e-12)


def resize_map(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) -> (H, W), bilinear."""
    return F.interpolate(saliency[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
