"""Load diffprobe checkpoints and export them as diffusers folders.

An exported unconditional model is a plain ``DDPMPipeline`` folder (``unet/``, ``scheduler/``,
``model_index.json``). A conditional one has ``unet/`` (UNet2DConditionModel), ``scheduler/`` and
``caption_encoder/`` (diffprobe.captions.CaptionEncoder, also a diffusers ModelMixin).
"""

from __future__ import annotations

import copy
import json
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DConditionModel, UNet2DModel

from diffprobe.captions import CaptionEncoder
from diffprobe.capture.eager import eager
from diffprobe.module import CHECKPOINT_MARKER, DiffusionModule

_STEP = re.compile(r"step=(\d+)")


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> DiffusionModule:
    """A DiffusionModule with the raw and EMA weights of a diffprobe Lightning checkpoint.

    Needs no network and no pretrained folder: the UNet architecture is stored in the checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # truncated file, another format: say so plainly
        raise ValueError(f"{path} is not a diffprobe checkpoint (torch.load failed: {type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or CHECKPOINT_MARKER not in checkpoint:
        raise ValueError(f"{path} is not a diffprobe checkpoint (no '{CHECKPOINT_MARKER}' entry); train one with train.py")
    stored = checkpoint[CHECKPOINT_MARKER]
    # LightningCLI stores bookkeeping such as "_instantiator" among the hyper-parameters.
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    # Rebuild the exact architecture from the stored config, without re-reading pretrained weights.
    hparams.update(pretrained=None, preset=None, unet=stored["unet_config"], compile=False)
    module = DiffusionModule(**hparams)
    module.use_scheduler(DDPMScheduler.from_config(stored["scheduler_config"]))
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    module.global_step_at_save = int(checkpoint.get("global_step", 0))
    return module.eval()


def checkpoint_step(path: Path) -> int:
    match = _STEP.search(path.name)
    if match:
        return int(match.group(1))
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False).get("global_step", -1))
    except Exception:  # not a checkpoint at all: load_module will say so clearly
        return -1


def find_checkpoints(run_or_file: str | Path) -> list[Path]:
    """One checkpoint file, or every ``step=*.ckpt`` of a run directory in order of global step."""
    path = Path(run_or_file)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint or run directory at {path}")
    found = sorted((p for p in path.rglob("*.ckpt") if _STEP.search(p.name)), key=checkpoint_step)
    if not found:
        found = sorted(path.rglob("*.ckpt"))
    if not found:
        raise FileNotFoundError(f"run directory {path} holds no .ckpt files")
    return found


def export(module: DiffusionModule, out_dir: str | Path, use_ema: bool = True) -> Path:
    """Write a diffusers folder of the model (EMA weights by default). Refuses to write into a
    non-empty folder, so nothing the user had is overwritten."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"export folder {out} exists and is not empty; choose a new --out")
    # An exported model is a plain eager module: copy it without torch.compile's wrapper.
    with eager(module.unet), module.ema_weights() if use_ema else nullcontext():
        unet = copy.deepcopy(module.unet).to("cpu", memory_format=torch.contiguous_format)
        encoder = copy.deepcopy(module.caption_encoder).to("cpu") if module.caption_encoder is not None else None
    scheduler = DDPMScheduler.from_config(module.scheduler.config)
    if encoder is None:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out)
    else:
        unet.save_pretrained(out / "unet")
        scheduler.save_pretrained(out / "scheduler")
        encoder.save_pretrained(out / "caption_encoder")
        # Sampling settings diffusers' folders have no place for (read back by load_exported).
        (out / "diffprobe.json").write_text(json.dumps({"guidance_scale": module.hparams.guidance_scale}))
    return out


@dataclass
class ExportedModel:
    unet: UNet2DModel | UNet2DConditionModel
    scheduler: DDPMScheduler
    caption_encoder: CaptionEncoder | None
    guidance_scale: float = 1.0  # the CFG weight the model was trained to sample with (conditional models)


def load_exported(folder: str | Path) -> ExportedModel:
    """Load a folder written by :func:`export` (either kind)."""
    folder = Path(folder)
    if not (folder / "unet" / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not an exported diffprobe/diffusers folder (no unet/config.json)")
    encoder = None
    if (folder / "caption_encoder").is_dir():
        encoder = CaptionEncoder.from_pretrained(folder / "caption_encoder")
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    else:
        unet = UNet2DModel.from_pretrained(folder / "unet")
    settings = json.loads((folder / "diffprobe.json").read_text()) if (folder / "diffprobe.json").exists() else {}
    # Folders exported before diffprobe.json existed: shapes_conditional.yaml's CFG weight.
    guidance = settings.get("guidance_scale", 3.0 if encoder is not None else 1.0)
    return ExportedModel(unet=unet, scheduler=DDPMScheduler.from_pretrained(folder / "scheduler"), caption_encoder=encoder, guidance_scale=guidance)
