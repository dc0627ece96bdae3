"""The fixed probe set: held-out images, their concept labels, a timestep grid and fixed noise.

Fixed once per run and saved with it, so every later measurement (live or on checkpoints) uses
exactly the same inputs and a change between checkpoints comes from the weights alone. The noise
for timestep index j is drawn from a generator seeded with ``(seed, j)``, so it is fixed without
storing N x T noise tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from diffprobe.data import dataset_size
from diffprobe.io.atomic import save_torch
from diffprobe.io.loading import LoadError, safe_load

PROBE_SET_FILE = "probe_set.pt"  # its name inside a run directory
PROBE_SET_FORMAT = "diffprobe.ProbeSet/1"  # the marker save() writes and load() checks

@dataclass
class ProbeSet:
    """images (N, C, H, W) in [-1, 1]; labels and control_labels (N, K) long; timesteps (T,) long;
    masks (N, 1, H, W) bool or None; concepts: name -> value names (K entries, labels' order)."""

    images: torch.Tensor
    labels: torch.Tensor
    control_labels: torch.Tensor
    timesteps: torch.Tensor
    concepts: dict[str, tuple[str, ...]]
    seed: int
    masks: torch.Tensor | None = None
    captions: list[str] = field(default_factory=list)
    # Images and noise already moved to an accelerator, kept for the next evaluation (not saved).
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def concept_names(self) -> list[str]:
        return list(self.concepts)

    def noise(self, t_index: int) -> torch.Tensor:
        """The fixed noise (N, C, H, W) of timestep ``timesteps[t_index]``."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + int(t_index))
        return torch.randn(self.images.shape, generator=generator)

    def images_on(self, device: torch.device) -> torch.Tensor:
        """``images`` on ``device``; kept there when it is an accelerator, so a live evaluation
        copies nothing from the host after its first."""
        return self._kept(device, "images", lambda: self.images)

    def noise_on(self, t_index: int, device: torch.device) -> torch.Tensor:
        """``noise(t_index)`` on ``device``; kept there when it is an accelerator: drawing the noise
        on the host each evaluation would cost more than the UNet's forwards on a GPU (a 1,000-image
        32x32 probe set's 15 noise tensors take 180 MB of its memory)."""
        return self._kept(device, ("noise", int(t_index)), lambda: self.noise(t_index))

    def release(self) -> None:
        """Free what :meth:`images_on` / :meth:`noise_on` keep on accelerators."""
        self._on_device.clear()

    def _kept(self, device: torch.device, key, make) -> torch.Tensor:
        device = torch.device(device)
        if device.type == "cpu":  # host memory is the user's: nothing is held beyond one call
            return make()
        if (device, key) not in self._on_device:
            self._on_device[(device, key)] = make().to(device)
        return self._on_device[(device, key)]

    def split(self, train_fraction: float = 2 / 3) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed train / test index split for fitting probes (a seeded permutation)."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(self.seed + 1))
        cut = int(round(train_fraction * len(self)))
        return order[:cut], order[cut:]

    def save(self, path: str | Path) -> Path:
        """Tensors and plain metadata only, so :meth:`load` reads it without running code."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = {
            "format": PROBE_SET_FORMAT,
            "images": self.images,
            "labels": self.labels,
            "control_labels": self.control_labels,
            "timesteps": self.timesteps,
            "concepts": {str(name): [str(v) for v in values] for name, values in self.concepts.items()},
            "seed": int(self.seed),
            "masks": self.masks,
            "captions": [str(c) for c in self.captions],
        }
        return save_torch(path, stored)  # atomic: a kill mid-write leaves the old file or none

    @classmethod
    def load(cls, path: str | Path) -> ProbeSet:
        """A probe set written by :meth:`save`, read as plain data (``torch.load(weights_only=True)``):
        loading never runs code. FileNotFoundError, or a ValueError naming the file."""
        path = Path(path)
        stored = safe_load(path, what="probe set")
        hint = "probe_set.pt written by ProbeMonitor or probe.py linear"
        if not isinstance(stored, dict) or stored.get("format") != PROBE_SET_FORMAT:
            raise LoadError(f"{path} is not a diffprobe probe set (no '{PROBE_SET_FORMAT}' format marker; expected a {hint})")
        tensors = ("images", "labels", "control_labels", "timesteps")
        bad = [k for k in tensors if not isinstance(stored.get(k), torch.Tensor)]
        bad += [k for k in ("masks",) if stored.get(k) is not None and not isinstance(stored[k], torch.Tensor)]
        bad += [k for k, kind in (("concepts", dict), ("seed", int), ("captions", list)) if not isinstance(stored.get(k), kind)]
        if bad:
            raise LoadError(f"{path} is a damaged diffprobe probe set (missing or malformed: {', '.join(bad)}); expected a {hint}")
        return cls(
            images=stored["images"],
            labels=stored["labels"],
            control_labels=stored["control_labels"],
            timesteps=stored["timesteps"],
            concepts={str(name): tuple(str(v) for v in values) for name, values in stored["concepts"].items()},
            seed=int(stored["seed"]),
            masks=stored.get("masks"),
            captions=[str(c) for c in stored["captions"]],
        )

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        concepts: dict[str, tuple[str, ...]],
        *,
        size: int,
        timesteps: list[int],
        seed: int = 0,
    ) -> ProbeSet:
        """The first ``size`` items of a held-out data set (items as diffprobe data sets give them)."""
        if not concepts:
            raise ValueError("a probe set needs concept labels; this data set has none (set --data.concept_columns)")
        size = min(size, dataset_size(dataset))
        if size < 10:
            raise ValueError(f"a probe set needs at least 10 images, the held-out data has {dataset_size(dataset)}")
        items = [dataset[i] for i in range(size)]
        labels = torch.stack([item["labels"] for item in items])
        masks = torch.stack([item["mask"] for item in items]) if "mask" in items[0] else None
        # Control task (Hewitt & Liang 2019): each image keeps one random label per concept, drawn by
        # permuting the real labels across images (same class frequencies, no visual meaning).
        generator = torch.Generator().manual_seed(seed + 2)
        control = torch.stack([labels[torch.randperm(size, generator=generator), k] for k in range(labels.shape[1])], dim=1)
        return cls(
            images=torch.stack([item["image"] for item in items]),
            labels=labels,
            control_labels=control,
            timesteps=torch.tensor(sorted(set(int(t) for t in timesteps)), dtype=torch.long),
            concepts={k: tuple(v) for k, v in concepts.items()},
            seed=seed,
            masks=masks,
            captions=[item.get("caption", "") for item in items],
        )


@dataclass
class FixedExamples:
    """A few fixed held-out examples for recorders: images (N, C, H, W), masks (N, 1, H, W) or
    None, captions."""

    images: torch.Tensor
    masks: torch.Tensor | None
    captions: list[str]


def fixed_examples(run_dir: str | Path, heldout: Dataset, count: int) -> FixedExamples:
    """The first ``count`` examples of the run's saved probe set (so recorders and probes look at
    the same images), or of the held-out data when the run has none."""
    saved = Path(run_dir) / PROBE_SET_FILE
    if saved.is_file():
        base = ProbeSet.load(saved)
        images, masks, captions = base.images, base.masks, base.captions
    else:
        items = [heldout[i] for i in range(min(count, dataset_size(heldout)))]
        images = torch.stack([item["image"] for item in items])
        masks = torch.stack([item["mask"] for item in items]) if "mask" in items[0] else None
        captions = [item.get("caption", "") for item in items]
    count = min(count, len(images))
    return FixedExamples(images[:count], masks[:count] if masks is not None else None, list(captions[:count]))
