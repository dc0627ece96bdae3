"""One reverse-process loop for every diffprobe tool: it yields a record per step.

The loop is written to draw random numbers in exactly the order of diffusers' ``DDPMPipeline``
(initial noise with ``randn_tensor``, then the scheduler's own noise), so the same seed gives the
same image here and in an exported pipeline.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffprobe import interrupt
from diffprobe.choices import Sampler
from diffprobe.diffusion import ddpm
from diffprobe.diffusion.unet import UNet

if TYPE_CHECKING:
    from diffprobe.diffusion.captions import CaptionEncoder


@dataclass
class StepRecord:
    """One denoising step. Tensors are (B, C, H, W); ``t`` is the training timestep index."""

    index: int
    t: int
    x_t: torch.Tensor
    model_output: torch.Tensor
    x0_hat: torch.Tensor
    x_prev: torch.Tensor


def initial_noise(unet: UNet, batch_size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    shape = (batch_size, unet.config.in_channels, height, width)
    return randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype)


def guided_output(
    unet: UNet,
    x_t: torch.Tensor,
    t: torch.Tensor | int,
    condition: torch.Tensor | None = None,
    uncondition: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """UNet output at (x_t, t); classifier-free guided when both conditions are given, in one UNet
    call on the doubled batch (unconditional half first, see :func:`cfg_combine`)."""
    if condition is None:
        return unet(x_t, t).sample
    if uncondition is None or guidance_scale == 1.0:
        return unet(x_t, t, encoder_hidden_states=condition).sample
    both = unet(torch.cat([x_t, x_t]), t, encoder_hidden_states=torch.cat([uncondition, condition])).sample
    return cfg_combine(both, guidance_scale)


def cfg_combine(both: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: (2B, ...) unconditional then conditional halves -> (B, ...)
    u + w (c - u). Anything computed on the doubled batch (outputs, activations, gradients)
    combines the same way."""
    uncond, cond = both.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


@torch.no_grad()
def denoise(
    unet: UNet,
    scheduler,
    *,
    batch_size: int | None = None,
    noise: torch.Tensor | None = None,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    condition: torch.Tensor | None = None,
    uncondition: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    timesteps: list[int] | None = None,
) -> Iterator[StepRecord]:
    """Run the reverse process, yielding a :class:`StepRecord` per step.

    ``scheduler`` is modified (``set_timesteps``): pass a sampling copy, not the training one.
    Give ``noise`` (B, C, H, W) or ``batch_size`` (noise drawn from ``generator``). ``timesteps``
    overrides the scheduler's spacing (e.g. exponential schedules). ``condition`` /
    ``uncondition``: (B, L, D) caption embeddings for conditional UNets.
    """
    device = unet.device
    if noise is None:
        if batch_size is None:
            raise ValueError("give either noise or batch_size")
        noise = initial_noise(unet, batch_size, generator, device)
    if timesteps is not None:
        if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(f"{type(scheduler).__name__} cannot take custom timesteps; use a DDPMScheduler for them")
        scheduler.set_timesteps(timesteps=timesteps, device=device)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device)
    x_t = noise.to(device=device, dtype=unet.dtype)
    for index, t in enumerate(scheduler.timesteps):
        interrupt.check()
        # In the sample's dtype: under autocast the UNet answers in bf16, and the scheduler would
        # then draw its noise in bf16 (other numbers than diffusers' pipeline draws).
        output = guided_output(unet, x_t, t, condition, uncondition, guidance_scale).to(x_t.dtype)
        step = scheduler.step(output, t, x_t, generator=generator)
        yield StepRecord(index=index, t=int(t), x_t=x_t, model_output=output, x0_hat=step.pred_original_sample, x_prev=step.prev_sample)
        x_t = step.prev_sample


def seeded_samples(
    unet: UNet,
    train_scheduler,
    num_images: int,
    *,
    seed: int = 0,
    num_inference_steps: int = 100,
    sampler: Sampler = "ddpm",
    condition: torch.Tensor | None = None,
    uncondition: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Final samples (N, C, H, W) float32 in [-1, 1] from a fixed seed, on a fresh ``sampler``
    copy of the training noise schedule (``train_scheduler`` itself is not touched)."""
    return generate(
        unet,
        ddpm.sampling_scheduler(train_scheduler, sampler),
        batch_size=num_images,
        num_inference_steps=num_inference_steps,
        generator=torch.Generator(device=unet.device).manual_seed(seed),
        condition=condition,
        uncondition=uncondition,
        guidance_scale=guidance_scale,
    ).float()


@torch.no_grad()
def sample(
    unet: UNet,
    train_scheduler,
    caption_encoder: CaptionEncoder | None,
    num_images: int,
    *,
    seed: int = 0,
    num_inference_steps: int = 100,
    sampler: Sampler = "ddpm",
    captions: list[str] | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Final samples (N, C, H, W) float32 in [-1, 1] from a fixed seed: :func:`seeded_samples` with
    a conditional model's ``captions`` (one per image, N = len(captions)) encoded and guided."""
    if caption_encoder is not None and captions is None:
        raise ValueError("a conditional model needs captions to sample")
    if caption_encoder is None and captions is not None:
        raise ValueError("an unconditional model takes no captions")
    condition = caption_encoder.encode(captions) if caption_encoder is not None and captions is not None else None
    uncondition = caption_encoder.unconditional(len(captions)) if caption_encoder is not None and captions is not None else None
    return seeded_samples(
        unet,
        train_scheduler,
        len(captions) if captions is not None else num_images,
        seed=seed,
        num_inference_steps=num_inference_steps,
        sampler=sampler,
        condition=condition,
        uncondition=uncondition,
        guidance_scale=guidance_scale,
    )


def generate(unet: UNet, scheduler, **kwargs) -> torch.Tensor:
    """Final samples (B, C, H, W) in [-1, 1]; keyword arguments as :func:`denoise`."""
    records = denoise(unet, scheduler, **kwargs)
    last = None
    for record in records:
        last = record
    if last is None:
        raise ValueError("the schedule has no steps")
    return last.x_prev.clamp(-1, 1)
