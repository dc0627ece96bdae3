"""One checkpoint of the study, measured: the held-out prompts under every variant, the prompt
switch of each held-out concept, and the per-layer, per-t probes on held-out images.

A run's study is a list of these records in step order; :mod:`.summary` turns it into learning
speeds, the hidden window and the trajectory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from diffprobe.data.shapes import CONCEPT_NAMES, CONCEPTS, caption
from diffprobe.diffusion.ddpm import sampling_scheduler
from diffprobe.explain.model import from_model
from diffprobe.hidden import represented
from diffprobe.hidden.generate import InterventionSettings, steering_shift, variant_images
from diffprobe.hidden.prompts import HeldoutPrompts
from diffprobe.hidden.scores import score_variant
from diffprobe.intervene.steer import probe_direction
from diffprobe.intervene.switch import CaptionPairs, concept_pairs, insertion_curve, switched_images
from diffprobe.probes.pipeline import extract_features


@dataclass(frozen=True)
class StudySettings:
    """What makes two checkpoints' numbers comparable (a run's record keeps it)."""

    num_images: int = 64
    sampling_steps: int = 50
    lock_in_images: int = 32
    switch_times: tuple[int, ...] = (10, 25, 50, 100, 200, 300, 500, 700)
    layers: tuple[str, ...] = ("down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1")
    timesteps: tuple[int, ...] = (10, 50, 100, 200, 300, 500, 700)
    trained_images: int = 600
    heldout_images: int = 96
    seed: int = 0
    interventions: InterventionSettings = field(default_factory=InterventionSettings)

    def __post_init__(self):
        if self.interventions.steer_t not in self.timesteps:
            raise ValueError(f"steer_t {self.interventions.steer_t} must be one of the probe timesteps {list(self.timesteps)}")
        if self.interventions.steer_layer not in self.layers:
            raise ValueError(f"steer_layer {self.interventions.steer_layer!r} must be one of the probed layers {list(self.layers)}")

    def record(self) -> dict:
        return asdict(self)


def sampler_timesteps(scheduler, steps: int) -> list[int]:
    """The timesteps (descending) a DDPM sampler of ``steps`` steps visits on this noise schedule."""
    fresh = sampling_scheduler(scheduler.config, "ddpm")
    fresh.set_timesteps(steps)
    return [int(t) for t in fresh.timesteps]


def switch_pairs(prompts: HeldoutPrompts, concept: str, count: int, seed: int) -> CaptionPairs:
    """Caption A: a held-out prompt with ``concept`` set to another (trained) value; caption B:
    the held-out prompt itself. Switching A -> B at t_s asks when the held-out value is decided."""
    held = concept_pairs(prompts.labels[:count], dict(CONCEPTS), lambda row: caption(dict(zip(CONCEPT_NAMES, row.tolist()))), concept, seed)
    return CaptionPairs(concept, held.second, held.first, held.second_labels, held.first_labels)


def lock_in(model, prompts: HeldoutPrompts, settings: StudySettings, reader, timesteps: list[int], batch_size: int) -> dict:
    """Per held-out concept: its insertion curve and t_lock on the held-out prompts."""
    explain = from_model(model)
    result = {}
    for concept in prompts.combination:
        pairs = switch_pairs(prompts, concept, settings.lock_in_images, settings.seed)
        images = switched_images(explain, pairs, settings.switch_times, timesteps, seed=settings.seed, batch_size=batch_size)
        curve = insertion_curve(pairs, [reader.read(images[g]) for g in range(images.shape[0])], settings.switch_times, list(reader.concepts))
        locked = curve.lock_in()
        result[concept] = {"t_lock": locked.t_lock, "low": locked.low, "high": locked.high, "inserted": locked.inserted, "cis": curve.rate}
    return result


@dataclass(frozen=True)
class Baselines:
    """The probes' two baselines, the same at every checkpoint of a run."""

    images: represented.CombinationImages
    input_accuracy: dict[str, torch.Tensor]
    init_accuracy: dict[str, dict[str, torch.Tensor]]


def baselines(init_model, design, prompts: HeldoutPrompts, settings: StudySettings, batch_size: int = 256) -> Baselines:
    """The probe images and the x_t and untrained-UNet accuracies on them."""
    size = init_model.unet.config.sample_size
    images = represented.combination_images(
        design, list(prompts.combination.values()), size, settings.timesteps, trained=settings.trained_images, heldout=settings.heldout_images,
        seed=settings.seed,
    )  # fmt: skip
    init = represented.heldout_accuracy(represented.unet_features(init_model, images, settings.layers, batch_size), images)
    return Baselines(images, represented.input_accuracy(init_model.scheduler, images), init)


def steering_for(model, prompts: HeldoutPrompts, images: represented.CombinationImages, features: torch.Tensor, settings: StudySettings) -> torch.Tensor:
    """The steering shift at this checkpoint: each held-out value's probe direction, fitted on the
    fit images' ``features`` (N, D) at the steered layer and t."""
    chosen = settings.interventions
    labels = images.probe_set.labels
    directions = [
        probe_direction(
            features[images.fit], labels[images.fit, k], CONCEPTS[CONCEPT_NAMES[k]], layer=chosen.steer_layer, t=chosen.steer_t,
            concept=CONCEPT_NAMES[k], target=prompts.combination[CONCEPT_NAMES[k]], method="ridge",
        )  # fmt: skip
        for k in prompts.concept_indices
    ]
    return steering_shift(directions, chosen.steer_alpha)


def measure_checkpoint(model, reader, prompts: HeldoutPrompts, base: Baselines, settings: StudySettings, batch_size: int = 64) -> dict:
    """The record of one checkpoint (``model.step``)."""
    images = base.images
    features = represented.unet_features(model, images, settings.layers, max(batch_size, 128))
    accuracy = represented.heldout_accuracy(features, images)
    j = images.probe_set.timesteps.tolist().index(settings.interventions.steer_t)
    shift = steering_for(model, prompts, images, features[settings.interventions.steer_layer][j], settings)
    timesteps = sampler_timesteps(model.scheduler, settings.sampling_steps)
    variants = variant_images(model, prompts, settings.interventions, shift, timesteps, seed=settings.seed, batch_size=batch_size)
    return {
        "step": int(model.step),
        "combination": prompts.combination,
        "variants": {name: score_variant(reader, shown, prompts).record() for name, shown in variants.items()},
        "lock_in": lock_in(model, prompts, settings, reader, timesteps, batch_size),
        "represented": represented.gain_rows(int(model.step), accuracy, base.input_accuracy, base.init_accuracy, images),
    }


def examples(model, design, prompts: HeldoutPrompts, settings: StudySettings, count: int = 8) -> dict[str, torch.Tensor]:
    """The first ``count`` held-out prompts' images under every variant, as the checkpoint's record
    measured them (same seeds, same steering shift)."""
    size = model.unet.config.sample_size
    images = represented.combination_images(
        design, list(prompts.combination.values()), size, settings.timesteps, trained=settings.trained_images, heldout=settings.heldout_images,
        seed=settings.seed,
    )  # fmt: skip
    chosen = settings.interventions
    features = extract_features(model.unet, model.scheduler, images.probe_set, [chosen.steer_layer], "mean", 256, model.empty_caption(), only=[chosen.steer_t])
    shift = steering_for(model, prompts, images, features[chosen.steer_layer][0], settings)
    first = HeldoutPrompts(prompts.combination, prompts.captions[:count], prompts.labels[:count])
    timesteps = sampler_timesteps(model.scheduler, settings.sampling_steps)
    return variant_images(model, first, chosen, shift, timesteps, seed=settings.seed, batch_size=count)
