"""Shared timing helper for the benchmarks (not part of the package)."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepTimer(pl.Callback):
    """Per-step time inside the step hooks, and wall time over all timed steps (data loading and
    anything other callbacks do between steps included). Steps before ``warmup`` are not timed."""

    def __init__(self, warmup: int):
        self.warmup, self.times, self._start = warmup, [], None
        self.wall_start = self.wall_end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        sync(pl_module.device)
        self._start = time.perf_counter()
        if trainer.global_step == self.warmup:  # global_step, not batch_idx: epochs restart batch_idx
            self.wall_start = self._start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(pl_module.device)
        if trainer.global_step > self.warmup:
            self.wall_end = time.perf_counter()
            self.times.append(self.wall_end - self._start)

    def wall_images_per_second(self, batch_size: int) -> float:
        return len(self.times) * batch_size / (self.wall_end - self.wall_start)
