"""``probe.py discover``: concepts without labels. For chosen layers and timesteps of the probe set's
grid it learns a sparse dictionary (a TopK SAE, ``diffprobe.discover.sae``) of the UNet's features
at every checkpoint: each spatial position's channel vector is one sample. With concept labels it
names, for each concept value, the feature that separates it best (AUROC of its strongest
activation in an image) and where it fires (IoU with the object mask); without them it shows each
feature's top-activating images. Features are followed across t and checkpoints by decoder cosine.
Beside every number, the same on the dictionary of the noisy input x_t itself (what the input
already carries). Writes ``discover.csv`` / ``.json``, ``dictionaries.csv`` / ``.json``, figures
and TensorBoard ``discover/<concept>/best_auroc`` into ``out`` (default ``<run>/discover``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveFloat, PositiveInt

from diffprobe.choices import Device, Weights
from diffprobe.commands.common import as_list, command

DEFAULT_LAYERS = ("mid_block", "up_blocks.0")


def log(message: str) -> None:
    print(f"probe.py discover: {message}", file=sys.stderr)


@command
def discover(
    ckpt: str, out: str | None = None, layers: tuple[str, ...] | str = DEFAULT_LAYERS, timesteps: tuple[NonNegativeInt, ...] | None = None,
    concepts: list[str] | None = None, expansion: PositiveInt = 4, k: PositiveInt = 8, sae_steps: PositiveInt = 600, probe_set: str | None = None,
    data: str | None = None, num_images: PositiveInt = 300, image_column: str = "img", concept_columns: tuple[str, ...] = (),
    heldout_fraction: OpenUnitInterval = 0.05, seed: int = 0, weights: Weights = "ema", logdir: str | None = None, device: Device = "auto",
    batch_size: PositiveInt = 128, top_features: PositiveInt = 8, learning_rate: PositiveFloat = 1e-3,
) -> Path:  # fmt: skip
    """Sparse dictionaries (TopK SAEs) of the UNet's features per (layer, t) at every checkpoint:
    which features match known concepts (AUROC, mask IoU), when in training and at which t they are
    born, and their top images; beside the same on the noisy input x_t.

    Args:
        ckpt: a .ckpt, a run directory (every checkpoint, in step order), a 'probe.py export' folder or a diffusers UNet folder
        out: output folder (default: <run>/discover, or discover-<name> beside --ckpt outside a run); must not hold an earlier discover's tables
        layers: UNet modules whose feature maps get a dictionary
        timesteps: timesteps of the probe set's grid to learn dictionaries at (default: those nearest 1%, 10% and 30% of T)
        concepts: concepts to score features against (default: every concept of the images; none without labels)
        expansion: dictionary features per feature-map channel
        k: active features per position (TopK)
        sae_steps: Adam steps per dictionary (batches of 1,024 positions)
        probe_set: a probe_set.pt (default: the run's own; else --num_images held-out images of --data)
        data: images when there is no probe set: 'shapes' (ConceptShapes) or a Hugging Face data set / local path (concept columns optional)
        num_images: held-out images when there is no probe set
        seed: the SAEs' initialisation and batches, and a new image set's noise
        batch_size: images per UNet call
        top_features: features per (layer, t) in the gallery of the last checkpoint
        learning_rate: the SAEs' Adam learning rate
    """
    from dataclasses import replace

    from diffprobe.commands.discover_output import measure_and_write
    from diffprobe.commands.discover_plan import plan_discover
    from diffprobe.commands.writing import guarded_output

    options = {"image_column": image_column, "concept_columns": list(concept_columns), "heldout_fraction": heldout_fraction}
    plan, first = plan_discover(ckpt, out, as_list(list(layers) if isinstance(layers, tuple) else layers) or list(DEFAULT_LAYERS), list(timesteps) if timesteps else None, list(concepts or []), expansion, k, sae_steps,
                                probe_set, data, num_images, seed, weights, logdir, device, batch_size, top_features, options)  # fmt: skip
    plan = replace(plan, settings=replace(plan.settings, learning_rate=learning_rate))
    with guarded_output(plan.folder, "discover"):
        return measure_and_write(plan, first)
