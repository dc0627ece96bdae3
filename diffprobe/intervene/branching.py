"""Sampling runs that branch off one trunk: the engine of both interventions.

An intervention changes a sampling run from some step on (the caption after a switch time, a
feature shift inside a window of timesteps). Every variant of one image therefore shares the trunk
run up to its first changed step. The trunk is sampled once; at each step where a branch starts,
its x_t and the random state of every sample's generator are kept; each branch continues from
there. Same seed, same noise: a branch draws exactly the noise the trunk would have drawn, so the
final images differ only through the intervention.

Each sample has its own ``torch.Generator`` (seeded with its own index), and diffusers draws a
batch's noise per sample from a list of generators, so an image does not depend on the batch it
was sampled in. Sampling uses a DDPM scheduler on the model's noise schedule with the given
timesteps (uniform, or the paper's early / latter schedules): DDPM's step keeps no state between
calls, so revisiting a step from a branch is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from diffprobe import interrupt

# (x_t, t, step index) -> the model's (guided) output at that step
StepOutput = Callable[[torch.Tensor, int, int], torch.Tensor]


@dataclass(frozen=True)
class Branch:
    """From step ``start`` on (0 = the first, noisiest step), the run takes ``output`` instead of
    the trunk's. ``start`` = number of steps means the branch is the trunk itself."""

    start: int
    output: StepOutput


def sample_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def _restored(states: list[torch.Tensor], device: torch.device) -> list[torch.Generator]:
    generators = []
    for state in states:
        generator = torch.Generator(device=device)
        generator.set_state(state)
        generators.append(generator)
    return generators


@torch.no_grad()
def branched_finals(
    trunk: StepOutput,
    branches: Sequence[Branch],
    scheduler: DDPMScheduler,
    *,
    shape: tuple[int, ...],
    seeds: Sequence[int],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(trunk's final x_0, each branch's final x_0), each (B, *shape) in model space.

    ``seeds``: one per sample (B of them). ``scheduler``: from :func:`diffprobe.diffusion.ddpm.sampling_scheduler`."""
    timesteps = [int(t) for t in scheduler.timesteps]
    generators = sample_generators(seeds, device)
    x = randn_tensor((len(seeds), *shape), generator=generators, device=device, dtype=dtype)
    starts = sorted({b.start for b in branches if b.start < len(timesteps)})
    saved: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
    for index, t in enumerate(timesteps):
        interrupt.check()
        if index in starts:
            saved[index] = (x.clone(), [g.get_state() for g in generators])
        x = scheduler.step(trunk(x, t, index), t, x, generator=generators).prev_sample
    trunk_final = x
    finals = []
    for branch in branches:
        if branch.start >= len(timesteps):
            finals.append(trunk_final)
            continue
        x, states = saved[branch.start]
        generators = _restored(states, device)
        for index in range(branch.start, len(timesteps)):
            interrupt.check()
            t = timesteps[index]
            x = scheduler.step(branch.output(x, t, index), t, x, generator=generators).prev_sample
        finals.append(x)
    return trunk_final, finals


def first_step_below(timesteps: Sequence[int], t: float) -> int:
    """Index of the first step whose timestep is below ``t`` (len(timesteps) when none is)."""
    return next((i for i, step_t in enumerate(timesteps) if step_t < t), len(timesteps))
