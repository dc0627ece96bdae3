"""TensorBoard tag names and writer access, in one place.

Every tag that depends on a timestep carries the training index t (0 = clean end), zero-padded
to four digits: ``train/loss_by_t/t0000-0099``, ``probe/<concept>/<layer>/t0500/acc``.

Two ways scalars reach the run, each for one kind of callback: what every rank measures on the
training batches (loss, OnlineProbes) goes through Lightning's ``log`` / ``log_dict``; what a
PeriodicObserver sees on rank zero at one step goes to the run's writer with :func:`log_scalars`
(Lightning's ``log`` is not allowed in ``on_train_end`` and would wait for the other ranks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

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
SAMPLE_CAPTIONS = "samples/captions"

# PredictionEvolution
PRED_X0_HAT = "pred/x0_hat"
PRED_X_T = "pred/x_t"
PRED_TRAJECTORY = "pred/trajectory"
DENOISE_CURVES = "denoise/curves"


def denoise_tag(metric: str, t: int) -> str:
    """``denoise/<metric>/t0500``: x0_hat against x0 at t."""
    return f"denoise/{metric}/{t_tag(t)}"


def recovery_tag(metric: str, t: int) -> str:
    """``recovery/<metric>/t0500``: the concept recovered in x0_hat at t (ConceptShapes masks)."""
    return f"recovery/{metric}/{t_tag(t)}"


# AttentionRecorder
AttentionStatistic = Literal["entropy", "distance", "object_mass"]
CROSS_ATTENTION_CURVES = "cross_attention/mass_curves"


def attention_map_tag(layer: str, t: int) -> str:
    return f"attention/{layer}/{t_tag(t)}"


def attention_statistic_tag(statistic: AttentionStatistic, layer: str, t: int) -> str:
    """``attention_entropy/<layer>/t0500``, ``attention_distance/...``, ``attention_object_mass/...``."""
    return f"attention_{statistic}/{layer}/{t_tag(t)}"


def token_name(index: int, word: str) -> str:
    """A caption token by position and word, ``03_red``: the same word may appear twice."""
    return f"{index:02d}_{word}"


def cross_attention_tag(token: str, t: int) -> str:
    return f"cross_attention/{token}/{t_tag(t)}"


def cross_attention_mass_tag(token: str, t: int) -> str:
    return f"cross_attention_mass/{token}/{t_tag(t)}"


def has_tensorboard(trainer) -> bool:
    return any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)


def tensorboard_writer(trainer) -> SummaryWriter | None:
    """The run's SummaryWriter, or None when no TensorBoard logger is attached."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def log_scalars(writer: SummaryWriter, values: Mapping[str, float], step: int) -> None:
    """Each tag -> value at ``step``: how a PeriodicObserver writes its scalars (module docstring)."""
    for tag, value in values.items():
        writer.add_scalar(tag, float(value), step)


PROBE_PREFIX = {"ema": "probe", "raw": "probe_raw", "online": "probe_online"}


def probe_tag(prefix: str, concept: str, layer: str, t: int | str) -> str:
    """``probe/<concept>/<layer>/t0500/acc``; ``t`` may be a bucket tag like ``t0000-0099``."""
    t_part = t if isinstance(t, str) else t_tag(t)
    return f"{prefix}/{concept}/{layer}/{t_part}/acc"


def probe_heatmap_tag(prefix: str, by: Literal["concept", "layer"], name: str) -> str:
    """``probe_heatmap/concept/<concept>`` (layer x t) or ``probe_heatmap/layer/<layer>`` (concept x t)."""
    return f"{prefix}_heatmap/{by}/{name}"


def probe_layout(concepts: list[str], layers: list[str], prefix: str = "probe") -> dict:
    """Custom-scalars layout: a category per concept, a chart per layer, one line per t."""
    return {
        f"{prefix}: {concept}": {layer: ["Multiline", [rf"{prefix}/{concept}/{layer}/t\d+/acc"]] for layer in layers}
        for concept in concepts
    }
