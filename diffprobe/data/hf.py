"""Real images through Hugging Face ``datasets``: a hub name or a local folder / file.

Local sources: a ``save_to_disk`` folder, a folder or file of parquet, or an image folder
(``imagefolder``: one subfolder per class, or train/test subfolders). Label columns named as
concepts become integer labels with readable value names (used for captions and probe plots).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

SOURCE_HELP = (
    "Give a local folder (save_to_disk, parquet or an image folder), a .parquet file, or a hub name "
    "such as 'cifar10' (hub names need network, or a copy in the Hugging Face cache)."
)


def _looks_local(source: str) -> bool:
    """A hub name is ``name`` or ``owner/name``; anything else that does not exist is a wrong path."""
    return source.startswith(("/", ".", "~")) or source.endswith(".parquet") or source.count("/") > 1 or "\\" in source


def _check_local_folder(path: Path) -> None:
    """An image folder must hold images: say so plainly instead of datasets' EmptyDatasetError."""
    extensions, others = set(Image.registered_extensions()), set()
    for file in path.rglob("*"):
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts):
            if file.suffix.lower() in extensions:
                return
            others.add(file.suffix or file.name)
    layout = "images in one subfolder per class (or in train/ and test/ subfolders), parquet files, or a save_to_disk copy"
    if not others:
        raise ValueError(f"data folder {path} is empty; it needs {layout}.")
    raise ValueError(f"data folder {path} holds no images (only {sorted(others)[:8]} files); it needs {layout}.")


def load_source(source: str, name: str | None = None) -> datasets.DatasetDict:
    """Every split of a data set, by hub name or local path, with a clear error if neither works."""
    path = Path(source).expanduser()
    if not path.exists() and _looks_local(source):
        raise ValueError(f"data source {source!r}: no file or folder at {path.absolute()}. {SOURCE_HELP}")
    if path.is_file() and path.suffix != ".parquet":
        raise ValueError(f"data source {path} is a file but not a .parquet file. {SOURCE_HELP}")
    is_saved = path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "dataset_info.json", "state.json"))
    has_parquet = path.is_dir() and any(path.rglob("*.parquet"))
    if path.is_dir() and not is_saved and not has_parquet:
        _check_local_folder(path)
    try:
        if is_saved:
            loaded = datasets.load_from_disk(str(path))
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
        if path.is_file():
            return datasets.load_dataset("parquet", data_files={"train": str(path)})
        if has_parquet:
            return datasets.load_dataset("parquet", data_dir=str(path))
        if path.is_dir():
            return datasets.load_dataset("imagefolder", data_dir=str(path))
        return datasets.load_dataset(source, name)
    except Exception as error:  # datasets raises many types; all mean "cannot use this source"
        raise ValueError(f"could not load data set {source!r}: {type(error).__name__}: {error}\n{SOURCE_HELP}") from error


@dataclass
class ConceptColumn:
    """One label column used as a concept: its value names and how raw values map to indices."""

    name: str
    values: tuple[str, ...]
    index_of: dict  # raw value -> index in values


def concept_column(split: datasets.Dataset, column: str, *more: datasets.Dataset) -> ConceptColumn:
    """``column`` of ``split`` as a concept; int and string values are collected over ``split`` and
    ``more`` (the held-out split), so a value seen only in held-out examples still has an index."""
    feature = split.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return ConceptColumn(column, tuple(feature.names), {i: i for i in range(feature.num_classes)})
    if isinstance(feature, datasets.Value) and feature.dtype == "bool":
        return ConceptColumn(column, (f"not_{column}", column), {False: 0, True: 1})
    if isinstance(feature, datasets.Value) and (feature.dtype.startswith(("int", "uint")) or feature.dtype in ("string", "large_string")):
        raw = sorted({v for s in (split, *more) for v in s.unique(column)}, key=lambda v: (v is None, v))
        if None in raw:
            raise ValueError(f"concept column {column!r} has missing values; a concept needs a label for every image. Fill or drop them first.")
        if len(raw) > 1000:
            raise ValueError(f"concept column {column!r} has {len(raw)} distinct values; a concept needs a small label set")
        return ConceptColumn(column, tuple(f"{column}_{v}" for v in raw), {v: i for i, v in enumerate(raw)})
    kind = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
    raise ValueError(
        f"concept column {column!r} holds {kind} values, which cannot be a concept: a concept is a small set of labels. "
        "Use a ClassLabel, bool, int or string column (bin float values into one first), or drop it from --data.concept_columns."
    )


def validate_columns(split: datasets.Dataset, image_column: str, concept_columns: list[str], source: str) -> None:
    available = list(split.column_names)
    if image_column not in available:
        raise ValueError(
            f"image column {image_column!r} not in data set {source!r}; its columns are {available}. "
            "Set --data.image_column to one of them."
        )
    if not isinstance(split.features[image_column], datasets.Image):
        raise ValueError(f"column {image_column!r} of {source!r} holds {split.features[image_column]}, not images")
    missing = [c for c in concept_columns if c not in available]
    if missing:
        raise ValueError(
            f"concept columns {missing} not in data set {source!r}; its columns are {available}. "
            "Fix --data.concept_columns."
        )


def to_tensor(image: Image.Image, image_size: int, channels: int) -> torch.Tensor:
    """PIL image -> (channels, S, S) float in [-1, 1]: RGB or grayscale, resized on the shorter side
    and centre-cropped (ImageOps.fit), bicubic."""
    image = image.convert("RGB" if channels == 3 else "L")
    image = ImageOps.fit(image, (image_size, image_size), method=Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32).reshape(image_size, image_size, channels)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


class HFImageDataset(Dataset):
    """Items like ConceptShapes' (``image``, ``labels``, ``caption``, ``index``) without masks."""

    def __init__(self, split: datasets.Dataset, image_column: str, concepts: list[ConceptColumn], image_size: int, channels: int):
        self.split, self.image_column, self.concepts = split, image_column, concepts
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict:
        row = self.split[int(index)]
        labels = [c.index_of[row[c.name]] for c in self.concepts]
        return {
            "image": to_tensor(row[self.image_column], self.image_size, self.channels),
            "labels": torch.tensor(labels, dtype=torch.long),
            "caption": " ".join(c.values[i] for c, i in zip(self.concepts, labels)),
            "index": int(index),
        }
