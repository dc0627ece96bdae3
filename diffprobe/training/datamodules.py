"""Lightning DataModules: ConceptShapes (default) and Hugging Face / local data sets.

Both expose what the model and the callbacks need without reaching into each other:
``image_size``, ``channels``, ``concepts`` (name -> value names), ``vocabulary`` (caption words),
``train_dataloader()`` and ``heldout_dataset()`` (fixed held-out examples for sample grids and
probes).
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from typing_extensions import override

from diffprobe.choices import Split
from diffprobe.data import hf
from diffprobe.data.shapes import CONCEPTS, SUPPORTED_SIZES, ConceptShapes, ShapesDesign, vocabulary
from diffprobe.fidelity.readers import ReaderData
from diffprobe.training.exact_resume import ResumableSampler, data_position, resume_position, run_seed


class WholeBatches(Dataset):
    """A data set with ``fetch_batch(indices) -> batch dict`` (ConceptShapes), seen by the
    DataLoader a batch at a time: the DataLoader calls ``__getitems__`` with a batch's indices
    (under any sampler, Lightning's distributed one included) and ``collate_batches`` passes the
    batch through. The data set itself stays an ordinary map-style one for any other DataLoader."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> dict:
        return self.dataset.fetch_batch(list(indices))


def collate_batches(samples: list[dict] | dict) -> dict:
    """The DataLoader's collate: a whole batch (``WholeBatches``) passes through; a list of
    samples is stacked as usual."""
    return samples if isinstance(samples, dict) else default_collate(samples)


class ImageDataModule(pl.LightningDataModule):
    """Shared loader settings; subclasses provide the data sets."""

    def __init__(self, image_size: int, channels: int, batch_size: int, num_workers: int):
        super().__init__()
        if image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        self.image_size, self.channels = image_size, channels
        self.batch_size, self.num_workers = batch_size, num_workers
        self._sampler: ResumableSampler | None = None
        self._resume_at: tuple[int, int] | None = None

    concepts: dict[str, tuple[str, ...]]
    vocabulary: list[str]

    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def heldout_dataset(self) -> Dataset:
        raise NotImplementedError

    def reader_data(self, max_train_images: int) -> ReaderData:
        """What a concept reader of this data trains and is scored on, described plainly for its
        cache (``fidelity.readers``): the same data gives the same reader in every command."""
        raise NotImplementedError

    @override
    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        # The order is the run seed's and the epoch's alone (not the global random stream), the same
        # on every rank, and a resumed epoch starts where its checkpoint stood (exact_resume).
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        self._sampler = ResumableSampler(dataset, self.batch_size, num_replicas=world_size, rank=rank, seed=run_seed())
        if self._resume_at is not None:
            self._sampler.resume_at(*self._resume_at)
            self._resume_at = None  # once: a later fit of this DataModule starts at the beginning
        return DataLoader(
            WholeBatches(dataset) if hasattr(dataset, "fetch_batch") else dataset,
            batch_size=self.batch_size,
            sampler=self._sampler,
            drop_last=True,
            num_workers=self.num_workers,
            collate_fn=collate_batches,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Worker seeds from their own generator: starting the workers draws nothing from the
            # training stream (the data sets draw no random numbers themselves).
            generator=torch.Generator().manual_seed(run_seed()),
        )

    # ---- the data position, for an exact resume --------------------------------------------------
    @override
    def state_dict(self) -> dict:
        return {"data_position": data_position(self.trainer, self.batch_size)}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_at = resume_position(state_dict.get("data_position") or {}, self.trainer, self.batch_size)
        if self._resume_at is not None and self._sampler is not None:  # the loader was made already
            self._sampler.resume_at(*self._resume_at)
            self._resume_at = None


class ConceptShapesDataModule(ImageDataModule):
    """ConceptShapes, made by the code: ``train_size`` training and ``heldout_size`` held-out images.

    Args:
        image_size: 16, 32 or 64.
        train_size: images in the training split.
        heldout_size: images in the held-out split (sample grids, probe sets).
        seed: the data set's seed; sample i is a pure function of (seed, split, i).
        batch_size: per device.
        num_workers: DataLoader workers (0 is fastest on a laptop: the images are in memory).
        heldout_combinations: combinations of concept values never shown in training, e.g.
            ``[[small, blue]]``; the held-out split keeps them (compositional generalisation).
        colour_contrast: how far apart the object colours are, in (0, 1] (1: the default palette;
            colour v renders as m + c (rgb(v) - m), m the palette's mean).
        size_difference: how far apart the sizes are, in (0, 3] (1: half-extents 0.14, 0.20, 0.26 of
            the image side; size v's is 0.20 + d (r(v) - 0.20)).
    """

    def __init__(
        self,
        image_size: int = 32,
        train_size: int = 10_000,
        heldout_size: int = 1_000,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        heldout_combinations: list[list[str]] | None = None,
        colour_contrast: float = 1.0,
        size_difference: float = 1.0,
    ):
        super().__init__(image_size=image_size, channels=3, batch_size=batch_size, num_workers=num_workers)
        if image_size not in SUPPORTED_SIZES:
            raise ValueError(f"ConceptShapes image_size must be one of {SUPPORTED_SIZES}, got {image_size}")
        if train_size < batch_size:
            raise ValueError(f"train_size ({train_size}) must be at least batch_size ({batch_size})")
        self.train_size, self.heldout_size, self.seed = train_size, heldout_size, seed
        # Checked now: a bad combination or signal fails before a model is built.
        combinations = tuple(tuple(c) for c in heldout_combinations or ())
        self.design = ShapesDesign(combinations, colour_contrast=colour_contrast, size_difference=size_difference)
        self.concepts = dict(CONCEPTS)
        self.vocabulary = vocabulary()
        self._datasets: dict[str, ConceptShapes] = {}

    def _split(self, split: Split, size: int) -> ConceptShapes:
        if split not in self._datasets:
            self._datasets[split] = ConceptShapes(size=size, image_size=self.image_size, split=split, seed=self.seed, design=self.design)
        return self._datasets[split]

    def train_dataset(self) -> ConceptShapes:
        return self._split("train", self.train_size)

    def heldout_dataset(self) -> ConceptShapes:
        return self._split("test", self.heldout_size)

    @override
    def reader_data(self, max_train_images: int) -> ReaderData:
        # Rendered anew at the reader's own size: sample i depends on (seed, split, i) only, so every
        # run of this data and image size shares one reader whatever its train_size.
        # The reader is the judge of every combination: it sees the same concept signal and no
        # held-out combinations, so it can say whether a held-out combination was generated.
        signal = ShapesDesign(colour_contrast=self.design.colour_contrast, size_difference=self.design.size_difference)
        train = ConceptShapes(size=max_train_images, image_size=self.image_size, split="train", seed=self.seed, design=signal)
        description = {"data": "ConceptShapes", "image_size": self.image_size, "seed": self.seed, "train_images": max_train_images}
        if signal != ShapesDesign():
            description.update(colour_contrast=signal.colour_contrast, size_difference=signal.size_difference)
        return ReaderData(description, train, self.heldout_dataset(), self.concepts)


class HFDataModule(ImageDataModule):
    """Images and label columns from a Hugging Face data set (hub name or local path).

    Args:
        source: hub name (``cifar10``, ``nielsr/CelebA-faces``...) or a local save_to_disk folder,
            parquet file/folder, or image folder.
        image_column: the column holding images (``img`` for cifar10, ``image`` for imagefolder).
        concept_columns: label columns to treat as concepts (ClassLabel, bool, int or string).
        train_split: split to train on.
        heldout_split: split for held-out examples; if the data set lacks it, ``heldout_fraction``
            of the training split is held out instead (deterministically).
        heldout_fraction: see ``heldout_split``.
        config_name: the hub data set's configuration name, if it has several.
        image_size: images are resized on the shorter side and centre-cropped to this.
        channels: 3 converts to RGB, 1 to grayscale.
        num_workers: DataLoader workers decoding images (default: the machine's cores, up to 4).
    """

    def __init__(
        self,
        source: str,
        image_column: str = "img",
        concept_columns: list[str] | None = None,
        train_split: str = "train",
        heldout_split: str = "test",
        heldout_fraction: float = 0.05,
        config_name: str | None = None,
        image_size: int = 32,
        channels: int = 3,
        batch_size: int = 64,
        num_workers: int | None = None,
        seed: int = 0,
    ):
        if num_workers is None:  # image decoding in workers, as many as the machine has (up to 4)
            num_workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        super().__init__(image_size=image_size, channels=channels, batch_size=batch_size, num_workers=num_workers)
        if not 0 < heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        self.source, self.image_column, self.config_name, self.seed = source, image_column, config_name, seed
        self.concept_columns = list(concept_columns or [])
        # Loaded now, not in setup(): a wrong name or column must fail before any training starts,
        # and the model needs the caption vocabulary to be built.
        splits = hf.load_source(source, config_name)
        if train_split not in splits:
            raise ValueError(f"split {train_split!r} not in data set {source!r}; it has {list(splits)}. Set --data.train_split.")
        train = splits[train_split]
        hf.validate_columns(train, image_column, self.concept_columns, source)
        if heldout_split in splits:
            heldout = splits[heldout_split]
            hf.validate_columns(heldout, image_column, self.concept_columns, f"{source} (split {heldout_split!r})")
        else:
            parts = train.train_test_split(test_size=heldout_fraction, seed=seed)
            train, heldout = parts["train"], parts["test"]
        if len(train) < batch_size:
            raise ValueError(f"data set {source!r} has {len(train)} training images, fewer than batch_size {batch_size}")
        self.columns = [hf.concept_column(train, c, heldout) for c in self.concept_columns]
        self.concepts = {c.name: c.values for c in self.columns}
        words: list[str] = []
        for column in self.columns:
            for value in column.values:
                words += [w for w in value.lower().split() if w not in words]
        self.vocabulary = words
        self._train, self._heldout = train, heldout

    def train_dataset(self) -> hf.HFImageDataset:
        return hf.HFImageDataset(self._train, self.image_column, self.columns, self.image_size, self.channels)

    def heldout_dataset(self) -> hf.HFImageDataset:
        return hf.HFImageDataset(self._heldout, self.image_column, self.columns, self.image_size, self.channels)

    @override
    def reader_data(self, max_train_images: int) -> ReaderData:
        description = {
            "data": self.source, "config_name": self.config_name, "image_column": self.image_column, "concept_columns": self.concept_columns,
            "image_size": self.image_size, "channels": self.channels, "seed": self.seed, "train_images": min(max_train_images, len(self._train)),
        }  # fmt: skip
        return ReaderData(description, self.train_dataset(), self.heldout_dataset(), self.concepts)
