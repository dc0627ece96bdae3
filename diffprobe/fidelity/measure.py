"""Sampling a model and reading its samples: per-concept fidelity numbers (no Lightning)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from diffprobe import interrupt
from diffprobe.choices import Sampler
from diffprobe.diffusion import sampling
from diffprobe.diffusion.model import DiffusionModel
from diffprobe.intervene.reader import ConceptReader
from diffprobe.probes.stats import wilson_interval

Metric = Literal["fidelity", "tv"]
CONFIDENT = 0.9  # the reader's top probability above which a sample counts as clearly showing a value


@dataclass(frozen=True)
class SamplePlan:
    """What one measurement samples: ``captions`` (one per image, conditional models) and their
    concept values ``labels`` (N, K); or ``num_images`` unconditional samples. Image i of the
    plan always gets the same noise (batches are seeded ``seed + first index``)."""

    num_images: int
    seed: int = 0
    num_inference_steps: int = 50
    sampler: Sampler = "ddpm"
    guidance_scale: float | None = None
    captions: tuple[str, ...] | None = None
    labels: torch.Tensor | None = None

    def __post_init__(self):
        if self.captions is not None and len(self.captions) != self.num_images:
            raise ValueError(f"{len(self.captions)} captions for {self.num_images} images; give one caption per image")
        if self.num_images < 1 or self.num_inference_steps < 1:
            raise ValueError(f"num_images and num_inference_steps must be positive, got {self.num_images} and {self.num_inference_steps}")


@dataclass(frozen=True)
class ConceptScore:
    """One concept's number: ``fidelity`` (share of samples showing the caption's value, Wilson
    interval) or ``tv`` (total variation between the value distributions of samples and held-out
    data; ``confident``: share of samples the reader is sure about)."""

    concept: str
    metric: Metric
    value: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None
    confident: float | None = None


@torch.no_grad()
def sample(model: DiffusionModel, plan: SamplePlan, batch_size: int = 64) -> torch.Tensor:
    """(N, C, H, W) float32 in [-1, 1] on the CPU: the plan's samples, ``batch_size`` at a time."""
    if model.conditional != (plan.captions is not None):
        raise ValueError("a conditional model samples captions and an unconditional one none: the plan does not fit the model")
    guidance = model.guidance_scale if plan.guidance_scale is None else plan.guidance_scale
    parts = []
    for start in range(0, plan.num_images, batch_size):
        interrupt.check()
        captions = list(plan.captions[start : start + batch_size]) if plan.captions is not None else None
        count = min(batch_size, plan.num_images - start)
        images = sampling.sample(
            model.unet, model.scheduler, model.caption_encoder, count, seed=plan.seed + start, num_inference_steps=plan.num_inference_steps,
            sampler=plan.sampler, captions=captions, guidance_scale=guidance,
        )  # fmt: skip
        parts.append(images.cpu())
    return torch.cat(parts)


@torch.no_grad()
def read(reader: ConceptReader, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (N, K) long, top probability (N, K)) of each concept in ``images``."""
    reader.eval()
    device = next(reader.parameters()).device
    values, confidence = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device).float()
        if batch.shape[-1] != reader.image_size:
            batch = torch.nn.functional.interpolate(batch, size=(reader.image_size, reader.image_size), mode="bilinear", antialias=True)
        probabilities = [logits.softmax(-1) for logits in reader(batch).values()]
        values.append(torch.stack([p.argmax(-1) for p in probabilities], dim=1).cpu())
        confidence.append(torch.stack([p.max(-1).values for p in probabilities], dim=1).cpu())
    return torch.cat(values), torch.cat(confidence)


def conditional_scores(readings: torch.Tensor, labels: torch.Tensor, concepts: Sequence[str]) -> list[ConceptScore]:
    """Per concept, the share of samples the reader reads as the caption's value: (N, K) x 2."""
    n = readings.shape[0]
    hits = (readings == labels).sum(0)
    low, high = wilson_interval(hits, n)
    return [ConceptScore(c, "fidelity", float(hits[k]) / n, n, float(low[k]), float(high[k])) for k, c in enumerate(concepts)]


def unconditional_scores(readings: torch.Tensor, confidence: torch.Tensor, reference: torch.Tensor, concepts: dict[str, tuple[str, ...]]) -> list[ConceptScore]:
    """Per concept, the total-variation distance between the value distribution the reader sees in
    samples (N, K) and in held-out data (M, K), and the share of samples read with confidence."""
    scores = []
    for k, (concept, values) in enumerate(concepts.items()):
        made = torch.bincount(readings[:, k], minlength=len(values)).double() / readings.shape[0]
        real = torch.bincount(reference[:, k], minlength=len(values)).double() / reference.shape[0]
        tv = float((made - real).abs().sum() / 2)
        scores.append(ConceptScore(concept, "tv", tv, readings.shape[0], confident=float((confidence[:, k] >= CONFIDENT).double().mean())))
    return scores


def score(reader: ConceptReader, images: torch.Tensor, plan: SamplePlan, reference: torch.Tensor | None = None) -> list[ConceptScore]:
    """Every concept of the reader on the plan's ``images`` (N, C, H, W): conditional fidelity
    against the plan's labels, or (unconditional) TV against the reader's ``reference`` readings of
    held-out data (M, K)."""
    concepts = list(reader.concepts)
    readings, confidence = read(reader, images)
    if plan.labels is not None:
        return conditional_scores(readings, plan.labels, concepts)
    if reference is None:
        raise ValueError("an unconditional model is scored against the reader's readings of held-out data: give reference")
    return unconditional_scores(readings, confidence, reference, reader.concepts)


def measure(model: DiffusionModel, reader: ConceptReader, plan: SamplePlan, reference: torch.Tensor | None = None, batch_size: int = 64) -> list[ConceptScore]:
    """Sample ``plan`` with ``model`` and :func:`score` the samples."""
    return score(reader, sample(model, plan, batch_size), plan, reference)


def rendered_at_step(values: dict[int, float], threshold: float, higher_is_better: bool = True) -> int | None:
    """The first step from which the value stays on the good side of ``threshold`` at every later
    step (fidelity >= 0.90, or TV <= 0.10); None when the last step is not there."""
    first = None
    for step in sorted(values):
        good = values[step] >= threshold if higher_is_better else values[step] <= threshold
        first = (step if first is None else first) if good else None
    return first
