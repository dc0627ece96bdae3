"""What the paper could not measure: R1 and R2 against ConceptShapes' ground truth.

- R1, per step of a sampling run of a conditional ConceptShapes model: how much DF-RISE and DF-CAM
  saliency falls inside the generated object's mask (mass-in-mask; a uniform map scores the mask's
  area fraction) and whether the map's peak lies in it (pointing game).
- R2, per step: is the caption concept whose words get the most token relevance the concept that
  changes most in x0_hat at that step? Each concept has a read-out of x0_hat (object / background
  mean colour, object centroid and extent, object outline, in-object high frequencies); its change
  per step is divided by its total change over the run, so concepts of different units compare.

The object mask comes from the generated final image (ConceptShapes draws one object on a plain
background): pixels far from the border's median colour, holes filled (textures shade the object).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from diffprobe.data.shapes import CAPTION_TEMPLATE, CONCEPT_NAMES, CONCEPTS, TEXTURE_ADJECTIVE
from diffprobe.explain.cam import df_cam
from diffprobe.explain.model import ExplainModel
from diffprobe.explain.relevance import token_relevance
from diffprobe.explain.rise import df_rise
from diffprobe.explain.run import explain_steps, normalise_map
from diffprobe.explain.similarity import gaussian_blur

_TEMPLATE_CONCEPT = {"size": "size", "colour": "object_colour", "texture": "texture", "shape": "shape", "position": "position", "background": "background_colour"}


def caption_word_concepts() -> list[str | None]:
    """The concept of each word of a ConceptShapes caption (None for template words)."""
    concepts: list[str | None] = []
    for word in CAPTION_TEMPLATE.split():
        if word.startswith("{"):
            concept = _TEMPLATE_CONCEPT[word.strip("{}")]
            concepts += [concept] * (2 if concept == "position" else 1)  # "top left"
        else:
            concepts.append(None)
    return concepts


def check_caption(caption: str) -> None:
    """A clear error unless ``caption`` is a ConceptShapes caption (the template with one value per
    concept): R2 maps caption words to concepts by their place in the template."""
    words, concepts = caption.lower().split(), caption_word_concepts()
    template = [w for w in CAPTION_TEMPLATE.split()]
    allowed = {
        "size": set(CONCEPTS["size"]),
        "object_colour": set(CONCEPTS["object_colour"]),
        "texture": set(TEXTURE_ADJECTIVE.values()),
        "shape": set(CONCEPTS["shape"]),
        "background_colour": set(CONCEPTS["background_colour"]),
        "position": {w for p in CONCEPTS["position"] for w in p.split()},
    }
    fixed = [w for w in template if not w.startswith("{")]
    problem = len(words) != len(concepts)
    if not problem:
        fixed_words = iter(fixed)
        for word, concept in zip(words, concepts):
            if (concept is None and word != next(fixed_words)) or (concept is not None and word not in allowed[concept]):
                problem = True
                break
    if problem:
        raise ValueError(f"{caption!r} is not a ConceptShapes caption; write it as {CAPTION_TEMPLATE!r}, e.g. 'a large red solid circle at the top left on a navy background'")


def object_mask(image: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> (H, W) bool: pixels whose colour differs from the border's median
    colour by more than ``threshold`` (in [0, 1] units) in some channel, holes filled."""
    unit = (image.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
    border = torch.cat([unit[:, 0], unit[:, -1], unit[:, :, 0], unit[:, :, -1]], dim=1)  # (3, 4 * side)
    background = border.median(dim=1).values[:, None, None]
    far = ((unit - background).abs().amax(0) > threshold).numpy()
    filled = ndimage.binary_fill_holes(ndimage.binary_closing(far, iterations=1)) | far
    return torch.from_numpy(filled)


def mass_in_mask(saliency: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of a non-negative map's mass inside the mask (the mask's area for a uniform map)."""
    saliency = saliency.float().clamp_min(0)
    total = saliency.sum()
    return float((saliency * mask).sum() / total) if total > 0 else float("nan")


def pointing_hit(saliency: torch.Tensor, mask: torch.Tensor) -> bool:
    """Does the map's maximum fall inside the mask?"""
    return bool(mask.flatten()[saliency.flatten().argmax()])


def concept_readouts(x0_hat: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Read-outs of the six ConceptShapes concepts from one x0_hat (3, H, W) given the object mask."""
    image = x0_hat.detach().float().cpu().clamp(-1, 1)
    inside, outside = mask.float(), (~mask).float()
    background = (image * outside).sum((1, 2)) / outside.sum().clamp_min(1)
    objectness = (image - background[:, None, None]).norm(dim=0)  # (H, W)
    height, width = objectness.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    weight = objectness / objectness.sum().clamp_min(1e-8)
    outline = (objectness > 0.5 * objectness.max()).float()
    detail = (image - gaussian_blur(image[None], 3, 1.0)[0]).abs().mean(0)
    return {
        "background_colour": background,
        "object_colour": (image * inside).sum((1, 2)) / inside.sum().clamp_min(1),
        "position": torch.stack([(weight * xs).sum(), (weight * ys).sum()]),
        "size": objectness.mean()[None],
        "shape": outline.flatten(),
        "texture": ((detail * inside).sum() / inside.sum().clamp_min(1))[None],
    }


def concept_changes(x0_hats: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """(steps - 1, concepts): each concept's read-out change from one step to the next, divided by
    its total change over the run (rows follow steps 1..S-1, columns CONCEPT_NAMES)."""
    readouts = [concept_readouts(x, mask) for x in x0_hats]
    changes = torch.zeros(len(readouts) - 1, len(CONCEPT_NAMES))
    for k in range(1, len(readouts)):
        for c, concept in enumerate(CONCEPT_NAMES):
            before, after = readouts[k - 1][concept], readouts[k][concept]
            if concept == "shape":  # outline masks: 1 - IoU
                union = ((before + after) > 0).sum()
                changes[k - 1, c] = 1 - ((before * after) > 0).sum() / union.clamp_min(1)
            else:
                changes[k - 1, c] = (after - before).norm()
    return changes / changes.sum(0, keepdim=True).clamp_min(1e-12)


def concept_relevance(scores: torch.Tensor, words: list[str]) -> torch.Tensor:
    """Word relevance (W,) of a ConceptShapes caption -> (concepts,) max over each concept's words."""
    concepts = caption_word_concepts()
    if len(words) != len(concepts):
        raise ValueError(f"expected a ConceptShapes caption of {len(concepts)} words, got {len(words)}: {words}")
    out = torch.zeros(len(CONCEPT_NAMES))
    for c, concept in enumerate(CONCEPT_NAMES):
        out[c] = max(float(scores[i]) for i, k in enumerate(concepts) if k == concept)
    return out


@dataclass
class GroundTruthReport:
    """Per-step curves averaged over inputs (lists over steps) and summary numbers."""

    timesteps: list[int]
    rise_mass: list[float]
    cam_mass: list[float]
    rise_pointing: list[float]
    cam_pointing: list[float]
    mask_area: list[float]
    relevance_by_concept: list[list[float]]  # (steps, concepts)
    change_by_concept: list[list[float]]  # (steps - 1, concepts)
    r2_agreement: float
    r2_chance: float
    inputs: list[dict] = field(default_factory=list)


@dataclass
class _OneRun:
    """One caption's sampling run: per step (S,) mass and pointing of DF-RISE / DF-CAM inside the
    object, relevance by concept (S, K), change by concept between steps (S - 1, K)."""

    rise_mass: torch.Tensor
    cam_mass: torch.Tensor
    rise_pointing: torch.Tensor
    cam_pointing: torch.Tensor
    mask_area: float
    relevance: torch.Tensor
    change: torch.Tensor
    timesteps: list[int]


def _measure_run(model: ExplainModel, caption: str, seed: int, num_inference_steps: int, rise_masks: int, batch_size: int, mask_threshold: float, mask_seed: int) -> _OneRun:
    prompt = model.prompt(caption)
    steps = explain_steps(model, prompt=prompt, seed=seed, num_inference_steps=num_inference_steps)
    mask = object_mask(model.decode(steps[0].final)[0], mask_threshold)
    if mask.shape != steps[0].x_t.shape[-2:]:
        mask = torch.nn.functional.interpolate(mask[None, None].float(), size=steps[0].x_t.shape[-2:], mode="nearest")[0, 0].bool()
    per_step: dict[str, list[Any]] = {"rise_mass": [], "cam_mass": [], "rise_pointing": [], "cam_pointing": [], "relevance": []}
    for step in steps:
        rise = normalise_map(df_rise(model, step, num_masks=rise_masks, batch_size=batch_size, seed=mask_seed).saliency)
        cam = normalise_map(df_cam(model, step).total)
        per_step["rise_mass"].append(mass_in_mask(rise, mask))
        per_step["cam_mass"].append(mass_in_mask(cam, mask))
        per_step["rise_pointing"].append(pointing_hit(rise, mask))
        per_step["cam_pointing"].append(pointing_hit(cam, mask))
        result = token_relevance(model, step.x_t, step.t, prompt)
        per_step["relevance"].append(concept_relevance(result.scores, result.words))
    change = concept_changes([model.decode(s.x0_hat)[0] for s in steps], mask)
    numbers = {k: torch.tensor([float(v) for v in per_step[k]]) for k in ("rise_mass", "cam_mass", "rise_pointing", "cam_pointing")}
    return _OneRun(**numbers, mask_area=float(mask.float().mean()), relevance=torch.stack(per_step["relevance"]), change=change, timesteps=steps[0].timesteps)


def measure(
    model: ExplainModel,
    captions: list[str],
    *,
    seed: int = 0,
    num_inference_steps: int = 20,
    rise_masks: int = 200,
    batch_size: int = 64,
    mask_threshold: float = 0.15,
) -> GroundTruthReport:
    """R1 and R2 curves over the steps of one sampling run per caption (seed, seed + 1, ...)."""
    if not model.conditional:
        raise ValueError("the ground-truth measurement needs a conditional ConceptShapes model (captions as prompts)")
    for caption in captions:
        check_caption(caption)
    runs = [
        _measure_run(model, caption, seed + offset, num_inference_steps, rise_masks, batch_size, mask_threshold, mask_seed=offset)
        for offset, caption in enumerate(captions)
    ]
    # R2: at each step after the first, is the most relevant concept the one that changed most?
    peaks = torch.cat([run.relevance[1:].argmax(1) for run in runs])
    most = torch.cat([run.change.argmax(1) for run in runs])
    pairs = len(peaks)
    peak_share = torch.bincount(peaks, minlength=len(CONCEPT_NAMES)) / pairs
    change_share = torch.bincount(most, minlength=len(CONCEPT_NAMES)) / pairs
    # Agreement expected if the peak and the most-changed concept were independent draws from their
    # own observed frequencies.
    chance = float((peak_share * change_share).sum())

    def mean(name: str) -> list:
        return torch.stack([getattr(run, name) for run in runs]).mean(0).tolist()

    return GroundTruthReport(
        timesteps=runs[0].timesteps,
        rise_mass=mean("rise_mass"),
        cam_mass=mean("cam_mass"),
        rise_pointing=mean("rise_pointing"),
        cam_pointing=mean("cam_pointing"),
        mask_area=[float(np.mean([run.mask_area for run in runs]))] * num_inference_steps,
        relevance_by_concept=mean("relevance"),
        change_by_concept=mean("change"),
        r2_agreement=int((peaks == most).sum()) / pairs,
        r2_chance=chance,
        inputs=[{"caption": caption, "seed": seed + offset, "mask_area": run.mask_area} for offset, (caption, run) in enumerate(zip(captions, runs))],
    )
