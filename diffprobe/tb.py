"""TensorBoard tag names and writer access, in one place.

Every tag that depends on a timestep carries the training index t (0 = clean end), zero-padded
to four digits: ``train/loss_by_t/t0000-0099``, ``probe/<concept>/<layer>/t0500/acc``.
"""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter


def t_tag(t: int) -> str:
    return f"t{int(t):04d}"


def bucket_tag(first: int, last: int) -> str:
    return f"t{int(first):04d}-{int(last):04d}"


LOSS = "train/loss"
LOSS_BY_T = "train/loss_by_t/{bucket}"
LEARNING_RATE = "train/lr"
EMA_DECAY = "train/ema_decay"
SAMPLES = "samples/{weights}"


def tensorboard_writer(trainer) -> SummaryWriter | None:
    """The run's SummaryWriter, or None when no TensorBoard logger is attached."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
