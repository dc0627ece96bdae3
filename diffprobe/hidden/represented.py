"""Is the held-out combination represented before it is generated? Per layer and t.

Linear probes are fitted on the UNet's features of images of *trained* combinations only, and
scored on images of the held-out combination (each noised to t with the probe set's fixed noise):
a probe that reads "small" and "blue" off the features of small blue objects the model never saw
shows the layer carries the two values in a form that composes. The same probes on x_t itself and
on the untrained UNet are the baselines (design.md: no probe number without them); the learned
gain is the model's accuracy minus the better baseline. ``combination`` counts an image right when
every held-out value is read right at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffprobe.choices import Method
from diffprobe.data.probe_set import ProbeSet
from diffprobe.data.shapes import CONCEPT_NAMES, CONCEPTS, ConceptShapes, ShapesDesign
from diffprobe.data.shapes_concepts import combination_labels
from diffprobe.probes.fit import fit_probes
from diffprobe.probes.pipeline import INPUT_LAYER, extract_features, input_features

COMBINATION = "combination"


@dataclass(frozen=True)
class CombinationImages:
    """A probe set of ``fit`` images (trained combinations), ``trained_test`` images (trained
    combinations, not fitted on) and ``heldout`` images (the held-out combination), by index."""

    probe_set: ProbeSet
    fit: torch.Tensor
    trained_test: torch.Tensor
    heldout: torch.Tensor
    concept_indices: list[int]  # the held-out combination's concepts


def combination_images(
    design: ShapesDesign, combination: Sequence[str], image_size: int, timesteps: Sequence[int], *, trained: int = 600,
    heldout: int = 96, seed: int = 0,
) -> CombinationImages:  # fmt: skip
    """Images of ``design``'s training split (no held-out combination in it) and of its test split
    holding ``combination``, at ``image_size``, noised on the ``timesteps`` grid."""
    wanted = combination_labels(tuple(combination))
    train = ConceptShapes(size=trained, image_size=image_size, split="train", seed=seed, design=design)
    pool = ConceptShapes(size=heldout * 40, image_size=image_size, split="test", seed=seed, design=design)
    chosen = torch.ones(len(pool), dtype=torch.bool)
    for k, v in wanted.items():
        chosen &= pool.labels[:, k] == v
    rows = chosen.nonzero().flatten()[:heldout]
    if len(rows) < heldout:
        raise ValueError(f"only {len(rows)} test images of {list(combination)} in {len(pool)}; ask for fewer held-out images")
    images = torch.cat([train.images, pool.images[rows]]).float().div(127.5).sub(1.0)
    labels = torch.cat([train.labels, pool.labels[rows]])
    probe_set = ProbeSet(images, labels, labels.clone(), torch.tensor(sorted(set(int(t) for t in timesteps))), dict(CONCEPTS), seed)
    cut = trained * 2 // 3
    return CombinationImages(probe_set, torch.arange(cut), torch.arange(cut, trained), torch.arange(trained, trained + len(rows)), sorted(wanted))


@torch.no_grad()
def heldout_accuracy(features: dict[str, torch.Tensor], images: CombinationImages, method: Method = "ridge") -> dict[str, dict[str, torch.Tensor]]:
    """Layer -> {"heldout", "trained"} -> (T, concepts + 1) accuracy of probes fitted on the fit
    images: on the held-out combination's images and on trained combinations' test images. The
    columns are the combination's concepts, then ``combination`` (all at once)."""
    labels = images.probe_set.labels
    columns = images.concept_indices
    num_classes = [len(CONCEPTS[CONCEPT_NAMES[k]]) for k in columns]
    result = {}
    for layer, values in features.items():
        scored = {}
        for name, rows in (("heldout", images.heldout), ("trained", images.trained_test)):
            fit = fit_probes(values[:, images.fit], labels[images.fit][:, columns], values[:, rows], labels[rows][:, columns], num_classes, method=method)
            both = fit.hits.all(dim=2).float().mean(1, keepdim=True)
            scored[name] = torch.cat([fit.accuracy, both], dim=1)
        result[layer] = scored
    return result


def unet_features(model, images: CombinationImages, layers: Sequence[str], batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Pooled features (T, N, D) per layer, under the empty caption (probes read the image)."""
    scheduler = model.scheduler
    return extract_features(model.unet, scheduler, images.probe_set, layers, "mean", batch_size, model.empty_caption())


def input_accuracy(scheduler, images: CombinationImages, method: Method = "ridge") -> dict[str, torch.Tensor]:
    """The x_t baseline's {"heldout", "trained"} accuracies (T, concepts + 1)."""
    return heldout_accuracy(input_features(scheduler, images.probe_set), images, method)[INPUT_LAYER]


def gain_rows(
    step: int, accuracy: dict[str, dict[str, torch.Tensor]], input_baseline: dict[str, torch.Tensor],
    init: dict[str, dict[str, torch.Tensor]], images: CombinationImages,
) -> list[dict]:  # fmt: skip
    """One row per (layer, t, concept): held-out accuracy, its two baselines and the learned gain,
    and the accuracy on trained combinations for comparison."""
    names = [CONCEPT_NAMES[k] for k in images.concept_indices] + [COMBINATION]
    rows = []
    for layer, scored in accuracy.items():
        for j, t in enumerate(images.probe_set.timesteps.tolist()):
            for c, concept in enumerate(names):
                model, x_t, untrained = float(scored["heldout"][j, c]), float(input_baseline["heldout"][j, c]), float(init[layer]["heldout"][j, c])
                rows.append({
                    "step": step, "layer": layer, "t": t, "concept": concept, "heldout_accuracy": model, "input_accuracy": x_t,
                    "init_accuracy": untrained, "learned_gain": model - max(x_t, untrained), "trained_accuracy": float(scored["trained"][j, c]),
                    "n_heldout": len(images.heldout),
                })  # fmt: skip
    return rows
