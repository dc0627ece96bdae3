"""StepProgressBar: Lightning's rich progress bar, counting the optimizer steps of a run.

diffprobe runs are set by ``max_steps`` (``max_epochs`` stays -1), so Lightning's bar reads
``Epoch 3/-2`` and restarts at every pass over the data, with the logger's version as a metric
(``v_num``). This bar is one line for the whole run: steps done out of ``max_steps`` and the
progress-bar metrics (the training loss). A run set by epochs gets Lightning's own bar.

The metrics are read at most every ``metrics_every_s`` seconds, not every step: reading the loss
copies it to the host, which waits for the GPU to finish the step, so a read per step would keep
the host from queueing the next step while the GPU works.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override


class StepProgressBar(RichProgressBar):
    """Args: metrics_every_s: seconds between two readings of the progress-bar metrics; other
    arguments as Lightning's ``RichProgressBar``."""

    def __init__(self, *args: Any, metrics_every_s: float = 0.5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.metrics_every_s = metrics_every_s
        self._metrics_read_at: float | None = None

    def _counts_steps(self, trainer: pl.Trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._counts_steps(trainer):
            return super().on_train_epoch_start(trainer, pl_module)
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:  # one bar for the run, not one per epoch
            self.train_progress_bar_id = self._add_task(trainer.max_steps, "steps")
        self._update(self.train_progress_bar_id, trainer.global_step)
        self.refresh()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._counts_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None:  # resumed in the middle of an epoch
            self.train_progress_bar_id = self._add_task(trainer.max_steps, "steps")
        self._update(self.train_progress_bar_id, trainer.global_step)
        now = time.monotonic()
        last = trainer.max_steps is not None and trainer.global_step >= trainer.max_steps
        if self._metrics_read_at is None or now - self._metrics_read_at >= self.metrics_every_s or last:
            self._metrics_read_at = now
            self._update_metrics(trainer, pl_module)
        self.refresh()

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run folder's version is not a measurement
        return metrics
