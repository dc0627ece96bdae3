"""Tiny fixtures: UNets of a few thousand parameters, 16x16 ConceptShapes, a few steps."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffprobe.data.module import ConceptShapesDataModule
from diffprobe.module import DiffusionModule

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

TINY_UNET = dict(
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    attention_head_dim=8,
)
TINY_CONDITIONAL_UNET = dict(
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    attention_head_dim=4,
    cross_attention_dim=16,
)


def make_module(conditional: bool = False, data: ConceptShapesDataModule | None = None, **overrides) -> DiffusionModule:
    kwargs = dict(
        preset="tiny",
        unet=dict(TINY_CONDITIONAL_UNET if conditional else TINY_UNET),
        conditional=conditional,
        image_size=16,
        num_train_timesteps=100,
        warmup_steps=0,
        learning_rate=1e-3,
        ema_decay=0.9,
        loss_buckets=4,
    )
    if conditional:
        kwargs["vocabulary"] = (data or shapes_data()).vocabulary
    kwargs.update(overrides)
    return DiffusionModule(**kwargs)


def shapes_data(**overrides) -> ConceptShapesDataModule:
    kwargs = dict(image_size=16, train_size=64, heldout_size=16, batch_size=8, num_workers=0)
    kwargs.update(overrides)
    return ConceptShapesDataModule(**kwargs)


def make_trainer(root: Path, max_steps: int, callbacks=(), every_n_steps: int = 2, version=None, **overrides) -> pl.Trainer:
    kwargs = dict(
        accelerator="cpu",
        max_steps=max_steps,
        logger=TensorBoardLogger(str(root / "runs"), name="test", version=version),
        callbacks=[ModelCheckpoint(filename="step={step:06d}", auto_insert_metric_name=False, every_n_train_steps=every_n_steps, save_top_k=-1, save_last=True), *callbacks],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


def read_events(log_dir: str | Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture
def tiny_data() -> ConceptShapesDataModule:
    return shapes_data()
