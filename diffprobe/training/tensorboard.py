"""The run's TensorBoard writer, as a Lightning Trainer holds it (its TensorBoardLogger)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter


def has_tensorboard(trainer: pl.Trainer) -> bool:
    return any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)


def tensorboard_writer(trainer: pl.Trainer) -> SummaryWriter | None:
    """The run's SummaryWriter, or None when no TensorBoard logger is attached."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
