"""Load diffprobe checkpoints and export them as diffusers folders.

An exported unconditional model is a plain ``DDPMPipeline`` folder (``unet/``, ``scheduler/``,
``model_index.json``). A conditional one has ``unet/`` (UNet2DConditionModel), ``scheduler/`` and
``caption_encoder/`` (diffprobe.captions.CaptionEncoder, also a diffusers ModelMixin).
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DConditionModel, UNet2DModel

from diffprobe.captions import CaptionEncoder
from diffprobe.capture.eager import eager
from diffprobe.module import CHECKPOINT_MARKER, DiffusionModule

_STEP = re.compile(r"step=(\d+)")


class LoadError(ValueError):
    """A file diffprobe will not load: not a diffprobe file, damaged, or holding Python objects
    whose unpickling could run code. Commands turn it into a clean exit with its message."""


# What torch's weights-only unpickler says when a file asks it to import or build a Python object.
_UNSAFE = re.compile(
    r"Unsupported global: GLOBAL \S+ was not an allowed global by default"
    r"|Trying to load unsupported GLOBAL \S+ whose module \S+ is blocked"
    r"|Trying to call reduce for unrecognized function[^\n]*"
    r"|Can only (?:create new object|build)[^\n]*"
    r"|Unsupported class \S+"  # torch < 2.4
)


def _torch_reason(error: BaseException) -> str:
    """torch's own reason, without its advice to retry with the unsafe loader."""
    text = str(error)
    found = _UNSAFE.search(text)
    if found:
        return found.group(0)
    text = text.split("WeightsUnpickler error:")[-1].split("Check the documentation of torch.load")[0]
    for boilerplate in ("Weights only load failed.", getattr(torch.serialization, "UNSAFE_MESSAGE", None)):
        text = text.replace(boilerplate, "") if boilerplate else text
    return f"{type(error).__name__}: {' '.join(text.split()) or repr(error)}"


def safe_load(path: str | Path, *, what: str = "checkpoint", map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """The contents of a diffprobe file (``.ckpt``, ``probe_set.pt``), loaded without running code.

    Only plain data comes back (tensors, numbers, strings, lists, tuples, dicts): the file is read
    with ``torch.load(weights_only=True)``, which refuses to import or call anything. ``what`` names
    the file's kind in messages. Raises FileNotFoundError (no such file) or LoadError (a
    ValueError) naming the file: empty, truncated, not a torch file, or holding Python objects.
    ``mmap``: map the tensors instead of reading them (a look at a large checkpoint's metadata).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is not a file")
    if path.stat().st_size == 0:
        raise LoadError(f"{path} is not a diffprobe {what} (the file is empty)")
    try:
        with warnings.catch_warnings():  # random bytes read as a pickle protocol number
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises pickle.UnpicklingError for a disallowed object
        reason = _torch_reason(error)
        if isinstance(error, pickle.UnpicklingError) and _UNSAFE.search(reason):
            raise LoadError(
                f"refusing to load {path}: it contains Python objects that could run code when loaded ({reason}). "
                "diffprobe only loads plain data (tensors, numbers, strings, lists, dicts). Re-create the file with "
                "diffprobe, or load it yourself with torch.load(weights_only=False) if you trust its author."
            ) from error
        # A damaged zip archive, random bytes, another format.
        raise LoadError(f"{path} is not a diffprobe {what} (truncated or not a torch file: {reason})") from error


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> DiffusionModule:
    """A DiffusionModule with the raw and EMA weights of a diffprobe Lightning checkpoint.

    Needs no network and no pretrained folder: the UNet architecture is stored in the checkpoint.
    The file is loaded as plain data (:func:`safe_load`): a checkpoint never runs code.
    """
    path = Path(path)
    checkpoint = safe_load(path, what="checkpoint", map_location=map_location)
    if not isinstance(checkpoint, dict) or CHECKPOINT_MARKER not in checkpoint:
        raise LoadError(f"{path} is not a diffprobe checkpoint (no '{CHECKPOINT_MARKER}' entry); train one with train.py")
    stored = checkpoint[CHECKPOINT_MARKER]
    missing = [key for key in ("state_dict", "hyper_parameters") if not isinstance(checkpoint.get(key), dict)]
    missing += [f"{CHECKPOINT_MARKER}.{key}" for key in ("unet_config", "scheduler_config") if not isinstance(stored, dict) or not isinstance(stored.get(key), dict)]
    if missing:
        raise LoadError(f"{path} is not a complete diffprobe checkpoint (missing or malformed: {', '.join(missing)})")
    # LightningCLI stores bookkeeping such as "_instantiator" among the hyper-parameters.
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    # Rebuild the exact architecture from the stored config, without re-reading pretrained weights.
    hparams.update(pretrained=None, preset=None, unet=stored["unet_config"], compile=False)
    module = DiffusionModule(**hparams)
    module.use_scheduler(DDPMScheduler.from_config(stored["scheduler_config"]))
    module.on_load_checkpoint(checkpoint)  # first, as Lightning calls it: it may upgrade the state dict
    module.load_state_dict(checkpoint["state_dict"])
    module.global_step_at_save = int(checkpoint.get("global_step", 0))
    return module.eval()


def checkpoint_step(path: Path) -> int:
    match = _STEP.search(path.name)
    if match:
        return int(match.group(1))
    try:
        stored = safe_load(path)
        return int(stored.get("global_step", -1)) if isinstance(stored, dict) else -1
    except (FileNotFoundError, ValueError, TypeError):  # not a checkpoint at all: load_module will say so clearly
        return -1


def run_directory(path: str | Path) -> Path | None:
    """The run a checkpoint file or folder belongs to: ``<run>`` for ``<run>/checkpoints/x.ckpt``
    and for ``<run>`` itself (a folder with ``checkpoints/``); None outside a run. The path is taken
    as given (resolve it first to see through a link)."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        return path
    if path.parent.name == "checkpoints" and not path.is_dir():
        return path.parent.parent
    return None


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


EXPORT_SETTINGS = "diffprobe.json"  # what diffusers' folders have no place for


def exported_step(folder: str | Path) -> int | None:
    """The global step an export folder was written at (None when it does not say)."""
    settings = Path(folder) / EXPORT_SETTINGS
    if not settings.is_file():
        return None
    try:
        step = json.loads(settings.read_text()).get("global_step")
    except (ValueError, AttributeError):
        return None
    return int(step) if step is not None else None


def export(module: DiffusionModule, out_dir: str | Path, use_ema: bool = True, step: int | None = None) -> Path:
    """Write a diffusers folder of the model (EMA weights by default). Refuses to write into a
    non-empty folder, so nothing the user had is overwritten. ``step``: the global step recorded
    in ``diffprobe.json`` (default: the module's)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"export folder {out} exists and is not empty; choose a new --out")
    # An exported model is a plain eager module: copy it without torch.compile's wrapper.
    with eager(module.unet), module.ema_weights() if use_ema else nullcontext():
        unet = copy.deepcopy(module.unet).to("cpu", memory_format=torch.contiguous_format)
        encoder = copy.deepcopy(module.caption_encoder).to("cpu") if module.caption_encoder is not None else None
    scheduler = DDPMScheduler.from_config(module.scheduler.config)
    # Sampling settings and provenance (read back by load_exported and ExportDiffusers).
    settings = {"global_step": int(step if step is not None else getattr(module, "global_step_at_save", module.global_step)), "weights": "ema" if use_ema else "raw"}
    if encoder is None:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out)
    else:
        unet.save_pretrained(out / "unet")
        scheduler.save_pretrained(out / "scheduler")
        encoder.save_pretrained(out / "caption_encoder")
        settings["guidance_scale"] = module.hparams.guidance_scale
    (out / EXPORT_SETTINGS).write_text(json.dumps(settings))
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
    settings = json.loads((folder / EXPORT_SETTINGS).read_text()) if (folder / EXPORT_SETTINGS).exists() else {}
    # Folders exported before diffprobe.json existed: shapes_conditional.yaml's CFG weight.
    guidance = settings.get("guidance_scale", 3.0 if encoder is not None else 1.0)
    return ExportedModel(unet=unet, scheduler=DDPMScheduler.from_pretrained(folder / "scheduler"), caption_encoder=encoder, guidance_scale=guidance)
