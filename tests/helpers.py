"""Helpers the tests share (``from helpers import make_module, refusal``): tiny UNets of a few
thousand parameters, 16x16 ConceptShapes, trainers of a few steps, event readers, small data sets.
The tiny runs shared by every test (trained once per session) are conftest.py's fixtures; the
Hugging Face offline environment is set there, before anything imports Hugging Face."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffprobe.commands.probe import probe_main
from diffprobe.diffusion.unet import UNCONDITIONAL_PRESETS
from diffprobe.training.datamodules import ConceptShapesDataModule
from diffprobe.training.module import DiffusionModule

if "OMP_NUM_THREADS" not in os.environ:  # 2 threads, unless OMP_NUM_THREADS says otherwise (1 on a busy machine)
    torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]  # the repository: configs/, train.py, diffprobe/

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

# The one concept reader the tests train (probe.py fidelity / intervene flags, ConceptFidelity's
# arguments): every test asks for the same, so conftest's per-session reader cache trains it once.
READER_SETTINGS = dict(reader_steps=10, reader_images=64)
READER = [arg for key, value in READER_SETTINGS.items() for arg in (f"--{key}", str(value))]


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


def train_tiny_run(root: Path, max_steps: int, conditional: bool = False) -> Path:
    """A tiny ConceptShapes run with a checkpoint every step; returns its run directory."""
    data = shapes_data()
    make_trainer(root, max_steps=max_steps, every_n_steps=1).fit(make_module(conditional=conditional, data=data), datamodule=data)
    return root / "runs/test/version_0"


def make_trainer(root: Path, max_steps: int, callbacks=(), every_n_steps: int = 2, version=None, checkpoints: bool = True, **overrides) -> pl.Trainer:
    """A CPU trainer logging to <root>/runs/test/<version>, checkpointing every ``every_n_steps`` (and
    last.ckpt), or never with ``checkpoints=False`` (for a test that reads no checkpoint of a large UNet)."""
    checkpoint = ModelCheckpoint(filename="step={step:06d}", auto_insert_metric_name=False, every_n_train_steps=every_n_steps, save_top_k=-1, save_last=True)
    kwargs = dict(
        accelerator="cpu",
        max_steps=max_steps,
        logger=TensorBoardLogger(str(root / "runs"), name="test", version=version),
        callbacks=[checkpoint, *callbacks] if checkpoints else list(callbacks),
        enable_checkpointing=checkpoints,
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


COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def solid_image(colour: str, size=(20, 12)) -> Image.Image:
    return Image.fromarray(np.full((size[1], size[0], 3), COLOURS[colour], dtype=np.uint8))


def write_imagefolder(root):
    for colour in COLOURS:
        (root / colour).mkdir(parents=True)
        for i in range(6):
            solid_image(colour).save(root / colour / f"{i}.png")
    return root


def in_memory_dataset(n=12) -> datasets.Dataset:
    features = datasets.Features({"picture": datasets.Image(), "colour": datasets.ClassLabel(names=list(COLOURS)), "bright": datasets.Value("bool")})
    rows = {"picture": [solid_image(list(COLOURS)[i % 2]) for i in range(n)], "colour": [i % 2 for i in range(n)], "bright": [i % 3 == 0 for i in range(n)]}
    return datasets.Dataset.from_dict(rows, features=features)


def write_ddpm_cifar10_folder(root):
    """A folder shaped like google/ddpm-cifar10-32 (its real config, random weights)."""
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, **UNCONDITIONAL_PRESETS["ddpm-cifar10"])
    unet.save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, variance_type="fixed_large").save_pretrained(root / "scheduler")
    return unet


def refusal(args: list[str], capsys) -> str:
    """What probe.py says when it refuses ``args``: its exit message, or what the argument parser
    wrote to stderr (a flag of the wrong type, an unknown or misspelt key)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        probe_main(args)
    code = exit_info.value.code
    assert code not in (0, None), f"probe.py {args[0]} exited successfully"
    return (code if isinstance(code, str) else "") + capsys.readouterr().err
