"""The data behind a command's captions and its concept reader, shared by ``probe.py intervene``
and ``probe.py fidelity``: ConceptShapes at the model's size unless ``--data`` names another data
set (a run trained on other data must say which), and the reader that judges the images, from
``--reader`` or the cache of readers (``fidelity.readers``: one per data configuration)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from diffprobe.commands.common import CommandError, flag
from diffprobe.commands.source import Source
from diffprobe.data import dataset_size
from diffprobe.fidelity.readers import cached_reader
from diffprobe.intervene.reader import TrainedReader
from diffprobe.training.datamodules import ConceptShapesDataModule, HFDataModule, ImageDataModule

READER_ACCURACY_WARNING = 0.95  # below it, a concept's rates carry the reader's own errors visibly


# ---- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConceptData:
    """The images and concept labels behind the captions and the concept reader."""

    name: str  # "shapes" or --data
    concept_shapes: bool  # ConceptShapes: its own caption template, and given pairs are scored
    module: ImageDataModule | None  # a ConceptShapes / HF DataModule; None: Stable Diffusion without --data
    concepts: dict[str, tuple[str, ...]]  # empty without a data set
    reader_images: int

    def data_module(self) -> ImageDataModule:
        """The data module, for the callers that need one (they refuse a model without data first)."""
        if self.module is None:
            raise CommandError("this needs a data set with concept labels: give --data")
        return self.module

    def heldout_labels(self, count: int) -> torch.Tensor:
        """(count, K) value indices of the first held-out examples: the captions' labels."""
        heldout = self.data_module().heldout_dataset()
        if dataset_size(heldout) < count:
            raise CommandError(f"--num_captions {count}: the held-out data has only {dataset_size(heldout)} examples")
        if hasattr(heldout, "labels"):  # ConceptShapes keeps them in memory
            return heldout.labels[:count].clone()
        return torch.stack([heldout[i]["labels"] for i in range(count)])


def load_data(source: Source, model, data: str | None, options: dict, count: int, reader_images: int) -> ConceptData:
    """ConceptShapes unless ``--data`` names another; none for Stable Diffusion without ``--data``
    (its switched images are written unscored). Core errors are said in their own words: the
    caller adds ``--data``."""
    stable_diffusion = source.files[0].kind == "stable-diffusion"
    shapes = data in (None, "shapes") and not stable_diffusion
    name = data or "shapes"
    if stable_diffusion and data is None:
        return ConceptData(name, False, None, {}, reader_images)
    trained_on = run_data(source.run_dir)
    if data is None and trained_on is not None and not trained_on.endswith("ConceptShapesDataModule"):
        raise CommandError(
            f"{source.run_dir} was trained on {trained_on}, not ConceptShapes: give --data (its source) with --concept_columns "
            "for the captions and the concept reader"
        )
    size = 64 if stable_diffusion else model.unet.config.sample_size
    module: ImageDataModule
    if shapes:
        if size not in (16, 32, 64):
            raise ValueError(
                f"this model makes {size}x{size} images and ConceptShapes comes in 16, 32 or 64; give the model's own data set"
            )
        module = ConceptShapesDataModule(image_size=size, train_size=reader_images, heldout_size=max(1000, count), batch_size=1)
    else:
        if data is None:  # (Stable Diffusion without --data returned above; other models without it are ConceptShapes)
            raise CommandError("--data: give the data set of this model")
        channels = 3 if stable_diffusion else model.unet.config.in_channels
        module = HFDataModule(data, image_size=size, channels=channels, batch_size=1, num_workers=0, **options)
    return ConceptData(name, shapes, module, dict(module.concepts), reader_images)


def run_data(run_dir: Path | None) -> str | None:
    """The data class (and source) a run was trained on, from its config.yaml; None when unknown."""
    config = run_dir / "config.yaml" if run_dir else None
    if config is None or not config.is_file():
        return None
    try:
        data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    except yaml.YAMLError:
        return None
    source = (data.get("init_args") or {}).get("source")
    return f"{data.get('class_path')}" + (f" ({source})" if source else "") if data.get("class_path") else None


def load_reader(given: Path | None, data: ConceptData, *, steps: int, seed: int, device: str, command: str) -> TrainedReader:
    """``--reader`` (checked against the data's concepts), else the cached reader of this data
    configuration (trained now when there is none). Its held-out accuracy is said; concepts the
    reader reads below 95% are named."""
    if given is not None:
        with flag("--reader"):
            trained = TrainedReader.load(given)
        if trained.reader.concepts != {k: tuple(v) for k, v in data.concepts.items()}:
            raise CommandError(f"--reader {given} reads {list(trained.reader.concepts)}, not this data's concepts {list(data.concepts)}; it was trained on other data")
    else:
        log = lambda message: print(f"probe.py {command}: {message}", file=sys.stderr)  # noqa: E731
        trained = cached_reader(data.data_module().reader_data(data.reader_images), steps=steps, seed=seed, device=device, log=log)
    trained.reader.to(device)
    accuracy = ", ".join(f"{k} {v:.3f}" for k, v in trained.accuracy.items())
    print(f"probe.py {command}: reader accuracy on {trained.n_heldout} clean held-out images: {accuracy}", file=sys.stderr)
    short = [k for k, v in trained.accuracy.items() if v < READER_ACCURACY_WARNING]
    if short:
        print(f"probe.py {command}: the reader is below {READER_ACCURACY_WARNING:.0%} on {short}: their numbers carry its errors", file=sys.stderr)
    return trained
