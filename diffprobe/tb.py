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


def has_tensorboard(trainer) -> bool:
    return any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)


def tensorboard_writer(trainer) -> SummaryWriter | None:
    """The run's SummaryWriter, or None when no TensorBoard logger is attached."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None

PROBE_PREFIX = {"ema": "probe", "raw": "probe_raw", "online": "probe_online"}


def probe_tag(prefix: str, concept: str, layer: str, t: int | str) -> str:
    """``probe/<concept>/<layer>/t0500/acc``; ``t`` may be a bucket tag like ``t0000-0099``."""
    t_part = t if isinstance(t, str) else t_tag(t)
    return f"{prefix}/{concept}/{layer}/{t_part}/acc"


def probe_layout(concepts: list[str], layers: list[str], prefix: str = "probe") -> dict:
    """Custom-scalars layout: a category per concept, a chart per layer, one line per t."""
    return {
        f"{prefix}: {concept}": {
            layer: ["Multiline", [rf"{prefix}/{concept}/{layer}/t\d+/acc"]] for layer in layers
        }
        for concept in concepts
    }
