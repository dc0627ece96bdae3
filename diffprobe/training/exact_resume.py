"""Exact resume: what a checkpoint carries so that a resumed run trains the same weights, bit for
bit, as an uninterrupted run of the same seed (on the CPU in fp32; on a GPU where the kernels are
deterministic, ``--trainer.deterministic true``).

A training step draws its noise, timesteps and caption dropout from the global random streams, and
its batch from the data order. So:

- ``ExactResume`` (a callback every fit gets, beside RunSafety) saves every rank's random states
  (torch CPU, every initialised CUDA device, numpy, Python's ``random``) with each checkpoint and
  puts them back right before the first resumed step: whatever runs between loading and that step
  (observers catching up, the DataLoader starting, Lightning's per-rank seeding) cannot shift them.
- ``ResumableSampler`` orders the data as a pure function of (the run's seed, the epoch), the same on
  every rank (a ``DistributedSampler``, so Lightning keeps it under DDP), and starts a resumed epoch
  at the batch the checkpoint had reached. The DataModules save that position (``data_position``).
- Observers run inside ``torch.random.fork_rng`` (``PeriodicObserver``), so a run with and without an
  evaluation at some step trains the same weights.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset, DistributedSampler
from typing_extensions import override


def random_states() -> dict[str, Any]:
    """This process's random states: torch CPU, CUDA (every device, once CUDA is initialised), numpy, Python."""
    kind, keys, position, has_gauss, cached_gaussian = cast(tuple, np.random.get_state(legacy=True))
    # numpy's keys as a tensor: checkpoints load with torch's weights_only unpickler, which refuses arrays.
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian]
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(states["python"])
    # A checkpoint of another machine (other GPUs, or none) keeps the CUDA streams as they are.
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def observer_random_streams() -> AbstractContextManager[None]:
    """The context an observer runs in: it may draw from the global streams (a reader seeding torch,
    a probe's initialisation); the training stream continues afterwards as if it had not run."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=devices)


class ExactResume(pl.Callback):
    """Saves every rank's random states with a checkpoint; restores them before the first resumed step."""

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        # Lightning collects callback states on every rank before rank 0 writes the file: under DDP
        # this gather is collective like the checkpoint save that calls it.
        states = random_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
            return {"random_states": gathered}
        return {"random_states": [states]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("random_states")

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        if len(pending) != trainer.world_size:
            rank_zero_info(
                f"diffprobe: the checkpoint holds the random states of {len(pending)} process(es) and this run has "
                f"{trainer.world_size}: noise and timesteps after the resume differ from an uninterrupted run"
            )
            return
        set_random_states(pending[trainer.global_rank])


def run_seed() -> int:
    """The seed the run's data order derives from: ``seed_everything``'s (Lightning exports it to
    every rank as PL_GLOBAL_SEED), 0 when the run has none."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class ResumableSampler(DistributedSampler):
    """A shuffled order that is a pure function of (seed, epoch), cut across ranks as
    ``DistributedSampler`` cuts it, which can start an epoch ``skip_batches`` batches in."""

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def resume_at(self, epoch: int, batches: int) -> None:
        self._resume_at = (epoch, batches)
        # Lightning makes a resumed fit's first iterator before it sets the sampler's epoch, and
        # DataLoader workers draw their first indices right then: the epoch must be known already.
        self.set_epoch(epoch)

    @override
    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume_at is not None and self._resume_at[0] == self.epoch:
            indices = indices[self._resume_at[1] * self.batch_size :]
        self._resume_at = None  # once: the next epoch starts at its beginning
        return iter(indices)


def data_position(trainer: pl.Trainer | None, batch_size: int) -> dict[str, int]:
    """Where a checkpoint taken now stands in the data: the epoch and the batches trained in it
    (Lightning's progress counters, so batches a DataLoader prefetched are not counted), and what
    that position means (seed, world size, per-process batch size)."""
    if trainer is None:
        return {}
    loop = trainer.fit_loop
    epoch = loop.epoch_progress.current.processed  # type: ignore[attr-defined]  # a _ProcessedTracker
    batches = loop.epoch_loop.batch_progress.current.processed  # type: ignore[attr-defined]
    if batches >= trainer.num_training_batches:
        # A whole epoch is done (a save on its last batch or at its end): the resume starts the
        # next epoch, whose number Lightning has already counted as started.
        epoch, batches = loop.epoch_progress.current.started, 0  # type: ignore[attr-defined]
    return {"epoch": epoch, "batches": batches, "seed": run_seed(), "world_size": trainer.world_size, "batch_size": batch_size}


def resume_position(position: dict[str, int], trainer: pl.Trainer | None, batch_size: int) -> tuple[int, int] | None:
    """(epoch, batches) to resume the data at, or None with a message when the position was taken
    under another seed, world size or batch size (the order or the batches would not be the same)."""
    if "epoch" not in position:
        return None
    now = {"seed": run_seed(), "world_size": trainer.world_size if trainer is not None else 1, "batch_size": batch_size}
    changed = {k: (position[k], v) for k, v in now.items() if k in position and position[k] != v}
    if changed:
        said = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
        rank_zero_info(f"diffprobe: the checkpoint's data position was taken with other settings ({said}): the rest of its epoch is not the uninterrupted run's")
        return None
    return int(position["epoch"]), int(position["batches"])
