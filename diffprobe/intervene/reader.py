"""The concept reader: which value of each concept a final image shows.

Interventions are judged on generated images, so every concept needs a reader. diffprobe trains a
small CNN (one linear head per concept) on the data's clean training images and scores it on the
held-out split, for ConceptShapes and for any Hugging Face data set with concept columns alike.
Why a classifier and not a hand-written read-out of ConceptShapes: one mechanism for every data
set, and it copes with the soft, slightly off-palette colours and edges of generated images, which
fixed thresholds do not. Light Gaussian noise during training keeps it from relying on the exact
rendered colours.

The reader is saved as plain tensors and metadata (``torch.load(weights_only=True)`` reads it; no
code runs on load), with its held-out accuracy per concept, which every intervention result
records next to its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from diffprobe.data import dataset_size
from diffprobe.io.atomic import save_torch
from diffprobe.io.loading import LoadError, safe_load

READER_FORMAT = "diffprobe.ConceptReader/1"
READER_FILE = "concept_reader.pt"


class ConceptReader(nn.Module):
    """(B, C, S, S) images in [-1, 1] -> one logit vector per concept. Keeps a coarse spatial map
    (no global pooling) so that position stays readable."""

    def __init__(self, concepts: dict[str, tuple[str, ...]], image_size: int, channels: int = 3, width: int = 32):
        super().__init__()
        self.concepts = {name: tuple(values) for name, values in concepts.items()}
        self.image_size, self.channels, self.width = image_size, channels, width
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width * 2, width * 2, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(width * 2 * 16, 256),
            nn.GELU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(256, len(values)) for name, values in self.concepts.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.body(images)
        return {name: head(hidden) for name, head in self.heads.items()}

    @torch.no_grad()
    def read(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """(N, C, S, S) in [-1, 1] (resized to the reader's size if needed) -> (N, K) value indices in
        concept order."""
        self.eval()
        device = next(self.parameters()).device
        out = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device).float()
            if batch.shape[-1] != self.image_size or batch.shape[-2] != self.image_size:
                batch = F.interpolate(batch, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
            logits = self(batch)
            out.append(torch.stack([logits[name].argmax(1) for name in self.concepts], dim=1).cpu())
        return torch.cat(out)


@dataclass
class TrainedReader:
    """A reader and its held-out accuracy per concept (fraction correct, n images)."""

    reader: ConceptReader
    accuracy: dict[str, float]
    n_heldout: int

    def save(self, path: str | Path) -> Path:
        stored = {
            "format": READER_FORMAT,
            "concepts": {k: list(v) for k, v in self.reader.concepts.items()},
            "image_size": self.reader.image_size,
            "channels": self.reader.channels,
            "width": self.reader.width,
            "state_dict": self.reader.state_dict(),
            "accuracy": dict(self.accuracy),
            "n_heldout": self.n_heldout,
        }
        return save_torch(path, stored)  # atomic: a killed call leaves no half reader for the next to load

    @classmethod
    def load(cls, path: str | Path) -> TrainedReader:
        """A reader written by :meth:`save`, read without running code; a clear error otherwise."""
        path = Path(path)
        stored = safe_load(path, what="concept reader")
        if not isinstance(stored, dict) or stored.get("format") != READER_FORMAT:
            raise LoadError(f"{path} is not a diffprobe concept reader (no '{READER_FORMAT}' marker); let probe.py intervene train one")
        reader = ConceptReader(stored["concepts"], int(stored["image_size"]), int(stored["channels"]), int(stored["width"]))
        reader.load_state_dict(stored["state_dict"])
        return cls(reader.eval(), {k: float(v) for k, v in stored["accuracy"].items()}, int(stored["n_heldout"]))


def _stack(dataset: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All (images, labels) of a diffprobe data set; ConceptShapes' in-memory tensors directly."""
    size = dataset_size(dataset) if limit is None else min(limit, dataset_size(dataset))
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):  # ConceptShapes: uint8 in memory
        return dataset.images[:size].float() / 127.5 - 1.0, dataset.labels[:size]
    items = [dataset[i] for i in range(size)]
    return torch.stack([item["image"] for item in items]), torch.stack([item["labels"] for item in items])


def train_reader(
    train: Dataset,
    heldout: Dataset,
    concepts: dict[str, tuple[str, ...]],
    *,
    steps: int = 1500,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    noise: float = 0.08,
    seed: int = 0,
    device: str = "cpu",
    max_train_images: int = 20_000,
) -> TrainedReader:
    """Train a reader on ``train``'s clean images (plus Gaussian noise of std up to ``noise``) and
    score it on ``heldout``."""
    if not concepts:
        raise ValueError("a concept reader needs concept labels; this data set has none (give its concept columns)")
    images, labels = _stack(train, max_train_images)
    test_images, test_labels = _stack(heldout)
    if len(test_images) == 0:
        raise ValueError("the held-out split is empty: the reader's accuracy cannot be measured")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    reader = ConceptReader(concepts, images.shape[-1], images.shape[1]).to(device)
    optimizer = torch.optim.AdamW(reader.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps)
    names = list(concepts)
    reader.train()
    for _ in range(steps):
        index = torch.randint(len(images), (min(batch_size, len(images)),), generator=generator)
        batch = images[index]
        batch = batch + torch.randn(batch.shape, generator=generator) * noise * torch.rand(len(batch), 1, 1, 1, generator=generator)
        logits = reader(batch.to(device))
        losses = [F.cross_entropy(logits[name], labels[index, k].to(device)) for k, name in enumerate(names)]
        loss = sum(losses[1:], losses[0])  # added in order, as sum(losses) would (a tensor to mypy, not int | tensor)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    reader.eval()
    predicted = reader.read(test_images)
    accuracy = {name: float((predicted[:, k] == test_labels[:, k]).float().mean()) for k, name in enumerate(names)}
    return TrainedReader(reader.cpu(), accuracy, len(test_images))
