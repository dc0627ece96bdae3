"""Prompt-switch insertion (Gorgun et al., ICLR 2026): when is a concept decided?

Sample with caption A down to the switch time t_s, then with caption B (A with one concept
changed) to the end, same seed and noise. Concept Insertion Success CIS(t_s) is the share of final
images whose reader says B's value. Switching at the first step gives B's image (CIS near the
model's own success with B); switching at t_s = 0 never switches (CIS near 0). The lock-in time
t_lock is the largest t_s with CIS < 0.5, interpolated: below it, the concept is no longer
changed by the caption. Because every branch shares A's trunk, one grid of switch times costs
about half a sampling run per switch time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from diffprobe.diffusion.ddpm import sampling_scheduler
from diffprobe.diffusion.sampling import guided_output
from diffprobe.intervene.branching import Branch, branched_finals, first_step_below
from diffprobe.probes.stats import wilson_interval


@dataclass(frozen=True)
class CaptionPairs:
    """For one concept: captions A and B (B = A with ``concept`` changed), and their value indices
    (N, K) in the data's concept order (None when the captions carry no known labels)."""

    concept: str
    first: list[str]
    second: list[str]
    first_labels: torch.Tensor | None = None
    second_labels: torch.Tensor | None = None


def concept_pairs(
    labels: torch.Tensor, concepts: dict[str, tuple[str, ...]], captioner: Callable[[torch.Tensor], str], concept: str, seed: int = 0
) -> CaptionPairs:
    """Pairs for ``concept`` from labels A (N, K): B takes a different value of it, drawn per caption
    (seeded), the other concepts stay. ``captioner`` turns one row of labels into a caption."""
    names = list(concepts)
    k = names.index(concept)
    count = len(concepts[concept])
    if count < 2:
        raise ValueError(f"concept {concept!r} has a single value; there is nothing to switch to")
    generator = torch.Generator().manual_seed(seed * 7919 + k)
    shift = torch.randint(1, count, (labels.shape[0],), generator=generator)
    second = labels.clone()
    second[:, k] = (labels[:, k] + shift) % count
    return CaptionPairs(concept, [captioner(row) for row in labels], [captioner(row) for row in second], labels, second)


def switch_finals(
    unet,
    scheduler_config: dict,
    first: torch.Tensor,
    second: torch.Tensor,
    uncondition: torch.Tensor,
    switch_times: Sequence[int],
    timesteps: Sequence[int],
    *,
    seeds: Sequence[int],
    shape: tuple[int, ...],
    guidance_scale: float,
) -> list[torch.Tensor]:
    """Final samples (B, *shape) in model space, one per switch time: condition ``first`` (B, L, D)
    at every step with t >= t_s, ``second`` below it. The trunk (never switched) is t_s = 0."""
    device = first.device
    scheduler = sampling_scheduler(scheduler_config, "ddpm", timesteps)
    steps = [int(t) for t in scheduler.timesteps]
    uncond = uncondition.expand(first.shape[0], -1, -1)

    def with_caption(condition: torch.Tensor):
        return lambda x, t, index: guided_output(unet, x, t, condition, uncond, guidance_scale)

    branches = [Branch(first_step_below(steps, t_s), with_caption(second)) for t_s in switch_times]
    _, finals = branched_finals(
        with_caption(first), branches, scheduler, shape=shape, seeds=seeds, device=device, dtype=next(unet.parameters()).dtype
    )
    return finals


@dataclass(frozen=True)
class InsertionCurve:
    """CIS per switch time (ascending t_s) for one concept, with 95% Wilson intervals."""

    concept: str
    switch_times: list[int]
    successes: list[int]
    n: int
    others_kept: list[float]  # share of the other concepts still read as A's values

    @property
    def rate(self) -> list[float]:
        return [s / self.n for s in self.successes]

    @property
    def interval(self) -> tuple[list[float], list[float]]:
        low, high = wilson_interval(torch.tensor(self.successes), self.n)
        return low.tolist(), high.tolist()

    def lock_in(self) -> LockIn:
        low, high = self.interval
        return LockIn(
            t_lock=lock_in_time(self.switch_times, self.rate),
            # The CIS band's edges cross 0.5 at the interval's ends: the upper edge first (lower t).
            low=lock_in_time(self.switch_times, high),
            high=lock_in_time(self.switch_times, low),
            inserted=max(self.rate) >= 0.5,
        )


@dataclass(frozen=True)
class LockIn:
    """t_lock and its range from the CIS interval; None where CIS never reaches 0.5 (``inserted``
    False: the caption cannot insert the concept even from the start) or never rises through it
    (at least 0.5 at every switch time: it locks in below the grid's smallest t_s)."""

    t_lock: float | None
    low: float | None
    high: float | None
    inserted: bool


def lock_in_time(switch_times: Sequence[float], cis: Sequence[float], level: float = 0.5) -> float | None:
    """Where CIS last rises through ``level`` (the largest t_s with CIS < ``level`` whose next grid
    point reaches it), moved up to where the line between them crosses ``level``. None when CIS
    never reaches ``level`` or is at or above it at every switch time."""
    times, values = np.asarray(switch_times, dtype=float), np.asarray(cis, dtype=float)
    if len(times) == 0 or np.any(np.diff(times) <= 0):
        raise ValueError(f"switch times must be ascending and distinct, got {list(switch_times)}")
    crossings = np.flatnonzero((values[:-1] < level) & (values[1:] >= level))
    if len(crossings) == 0:
        return None
    i = crossings[-1]
    fraction = (level - values[i]) / (values[i + 1] - values[i])
    return float(times[i] + fraction * (times[i + 1] - times[i]))


def insertion_curve(
    pairs: CaptionPairs, readings: Sequence[torch.Tensor], switch_times: Sequence[int], concept_names: Sequence[str]
) -> InsertionCurve:
    """Score the readings (one (N, K) per switch time) of ``pairs``' final images."""
    k = list(concept_names).index(pairs.concept)
    others = [j for j in range(len(concept_names)) if j != k]
    first_labels, second_labels = pairs.first_labels, pairs.second_labels
    if first_labels is None or second_labels is None:
        raise ValueError(f"the {pairs.concept!r} caption pairs carry no concept labels to score the readings against")
    successes, kept = [], []
    for read in readings:
        successes.append(int((read[:, k] == second_labels[:, k]).sum()))
        kept.append(float((read[:, others] == first_labels[:, others]).float().mean()) if others else float("nan"))
    return InsertionCurve(pairs.concept, [int(t) for t in switch_times], successes, len(pairs.first), kept)


def encode_captions(model, captions: Sequence[str]) -> torch.Tensor:
    """(N, L, D) conditions of an ExplainModel's captions (a ValueError naming unknown words)."""
    return torch.cat([model.prompt(text).condition for text in captions])


@torch.no_grad()
def switched_images(
    model, pairs: CaptionPairs, switch_times: Sequence[int], timesteps: Sequence[int], *, seed: int = 0, batch_size: int = 64
) -> torch.Tensor:
    """Decoded final images (G, N, C, H, W) in [-1, 1] of ``pairs`` switched at each of the G
    ``switch_times``; sample i uses seed ``seed + i`` whatever the batch."""
    first, second = encode_captions(model, pairs.first), encode_captions(model, pairs.second)
    uncondition = model.prompt(pairs.first[0]).uncondition
    size = model.unet.config.sample_size
    shape = (model.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    chunks = []
    for start in range(0, len(pairs.first), batch_size):
        stop = min(start + batch_size, len(pairs.first))
        finals = switch_finals(
            model.unet, model.scheduler_config, first[start:stop], second[start:stop], uncondition, switch_times, timesteps,
            seeds=range(seed + start, seed + stop), shape=shape, guidance_scale=model.guidance_scale,
        )  # fmt: skip
        chunks.append(torch.stack([model.decode(x).cpu() for x in finals]))
    return torch.cat(chunks, dim=1)
