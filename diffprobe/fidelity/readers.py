"""The concept reader of a data configuration, trained once and cached.

Fidelity (live and on checkpoints) and interventions judge images with the same reader. Training
one takes a minute on a CPU, so it is cached by what decides it: the data (kind, source, image
size, seed, concept columns), the training images, steps and seed. The cache lives in
``$DIFFPROBE_CACHE`` (default ``~/.cache/diffprobe``), under ``readers/<key>.pt``, written
atomically and read as plain data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from diffprobe.intervene.reader import TrainedReader, train_reader


def cache_folder() -> Path:
    return Path(os.environ.get("DIFFPROBE_CACHE") or Path.home() / ".cache" / "diffprobe")


@dataclass(frozen=True)
class ReaderData:
    """What a reader is trained and scored on, and the plain description that names it in the cache."""

    description: dict[str, Any]
    train: Dataset = field(compare=False)
    heldout: Dataset = field(compare=False)
    concepts: dict[str, tuple[str, ...]] = field(compare=False)

    def key(self, steps: int, seed: int, max_train_images: int) -> str:
        settings = {**self.description, "steps": steps, "seed": seed, "max_train_images": max_train_images}
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_reader(data: ReaderData, *, steps: int = 3000, seed: int = 0, max_train_images: int = 20_000, device: str = "cpu", log=print) -> TrainedReader:
    """The reader of ``data``: loaded from the cache, or trained now and cached."""
    path = cache_folder() / "readers" / f"{data.key(steps, seed, max_train_images)}.pt"
    if path.is_file():
        reader = TrainedReader.load(path)
        if reader.reader.concepts == {k: tuple(v) for k, v in data.concepts.items()}:
            return reader
    log(f"training a concept reader on {data.description} ({steps} steps); cached in {path}")
    reader = train_reader(data.train, data.heldout, data.concepts, steps=steps, seed=seed, device=device, max_train_images=max_train_images)
    reader.save(path)
    return reader
