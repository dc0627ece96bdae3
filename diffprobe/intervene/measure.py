"""Measuring a plan on one model: pure functions from (model, plan, reader) to images and scores.

Nothing here writes a file or a log: the command decides what is measured, and its output module
writes what comes back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from diffprobe.data.probe_set import ProbeSet
from diffprobe.intervene.plans import SteerPlan, SwitchPlan
from diffprobe.intervene.reader import ConceptReader
from diffprobe.intervene.steer import SteeringDirection, SteerSetting, probe_direction, steered_images
from diffprobe.intervene.switch import InsertionCurve, insertion_curve, switched_images
from diffprobe.probes.pipeline import extract_features
from diffprobe.probes.stats import wilson_interval


@dataclass(frozen=True)
class SwitchResult:
    """One concept's prompt switch on one model."""

    images: torch.Tensor  # (G, N, C, H, W) in [-1, 1]: the finals switched at each of the G switch times
    curve: InsertionCurve | None  # None when the images are not scored (no reader, or pairs without labels)


def measure_switch(
    model, plan: SwitchPlan, reader: ConceptReader | None, concept_names: Sequence[str], *, seed: int, batch_size: int
) -> SwitchResult:
    """Sample ``plan``'s pairs switched at each switch time (image i with seed ``seed + i``) and,
    when it can, score them with ``reader``."""
    images = switched_images(model, plan.pairs, plan.switch_times, plan.timesteps, seed=seed, batch_size=batch_size)
    if reader is None or not plan.scored:
        return SwitchResult(images, None)
    readings = [reader.read(images[g]) for g in range(images.shape[0])]
    return SwitchResult(images, insertion_curve(plan.pairs, readings, plan.switch_times, concept_names))


@dataclass(frozen=True)
class SteerScore:
    """How often the reader says the target value for one steered variant (95% Wilson interval),
    and the share of the other concepts it still reads as in the unsteered image."""

    setting: SteerSetting
    successes: int
    n: int
    ci_low: float
    ci_high: float
    others_kept: float

    @property
    def rate(self) -> float:
        return self.successes / self.n


@dataclass(frozen=True)
class SteerResult:
    """One concept steered on one model."""

    direction: SteeringDirection
    plain: torch.Tensor  # (N, C, H, W): unsteered finals
    steered: torch.Tensor  # (S, N, C, H, W): finals per setting of the plan
    scores: tuple[SteerScore, ...]  # one per setting, in the plan's order
    unsteered_target_rate: float

    def record(self) -> dict:
        """What intervene.json keeps of the direction steered along."""
        d = self.direction
        return {
            "layer": d.layer, "t": d.t, "pool": d.pool, "method": d.method, "source": d.source, "target": d.target, "spread": d.spread, "probe_accuracy": d.probe_accuracy,
            "unsteered_target_rate": self.unsteered_target_rate,
        }  # fmt: skip


def steering_direction(model, plan: SteerPlan, probe_set: ProbeSet, *, batch_size: int) -> SteeringDirection:
    """The probe direction of ``plan``'s cell, refitted on this model's features of the probe set."""
    layer, t = plan.cell.layer, plan.cell.t
    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    encoder = model.extras.get("caption_encoder")
    # Probes read the image, as probe.py linear fits them: under the empty caption.
    condition = encoder.unconditional(1) if encoder is not None else None
    features = extract_features(model.unet, scheduler, probe_set, [layer], plan.cell.pool, batch_size, condition, only=[t])
    k = probe_set.concept_names.index(plan.concept)
    train, test = probe_set.split()
    return probe_direction(
        features[layer][0].cpu(), probe_set.labels[:, k], probe_set.concepts[plan.concept], layer=layer, t=t, concept=plan.concept,
        target=plan.target, source=plan.source, train=train, test=test, method=plan.cell.method, pool=plan.cell.pool,
    )  # fmt: skip


def score_steering(
    settings: Sequence[SteerSetting], unsteered: torch.Tensor, steered: torch.Tensor, reader: ConceptReader, concept_index: int, target: int
) -> tuple[SteerScore, ...]:
    """A score per setting. ``unsteered``: the reader's (N, K) values of the unsteered finals;
    ``steered``: (S, N, C, H, W) finals; ``target``: the target value's index."""
    k = concept_index
    others = [j for j in range(unsteered.shape[1]) if j != k]
    scores = []
    for setting, images in zip(settings, steered):
        read = unsteered if setting.alpha == 0 else reader.read(images)  # alpha 0 is the unsteered image itself
        successes, n = int((read[:, k] == target).sum()), read.shape[0]
        low, high = wilson_interval(torch.tensor([successes]), n)
        kept = float((read[:, others] == unsteered[:, others]).float().mean()) if others else float("nan")
        scores.append(SteerScore(setting, successes, n, float(low[0]), float(high[0]), kept))
    return tuple(scores)


def measure_steer(
    model, plan: SteerPlan, probe_set: ProbeSet, reader: ConceptReader, concepts: Mapping[str, Sequence[str]], *, seed: int, batch_size: int
) -> SteerResult:
    """Steer ``plan``'s concept along its probe direction and a random one of the same length (the
    control), every alpha in every window, and score the finals with ``reader``."""
    direction = steering_direction(model, plan, probe_set, batch_size=batch_size)
    settings = plan.settings
    plain, steered = steered_images(
        model, direction, settings, plan.timesteps, num_images=plan.num_images, captions=plan.captions, seed=seed, batch_size=batch_size,
        control_seed=seed,
    )  # fmt: skip
    k, target = list(concepts).index(plan.concept), list(concepts[plan.concept]).index(plan.target)
    unsteered = reader.read(plain)
    scores = score_steering(settings, unsteered, steered, reader, k, target)
    return SteerResult(direction, plain, steered, scores, float((unsteered[:, k] == target).float().mean()))
