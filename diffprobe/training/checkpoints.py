"""A training checkpoint as a DiffusionModule again (to continue, inspect or export it), and the
module's weights as a core :class:`~diffprobe.diffusion.model.DiffusionModel` or a diffusers folder.

Tools that only run the model read checkpoints without Lightning
(:func:`diffprobe.diffusion.model.load_checkpoint`); this is the training layer's side.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from diffprobe.capture.eager import eager
from diffprobe.choices import Weights
from diffprobe.diffusion import folders
from diffprobe.diffusion.model import DiffusionModel, check_checkpoint
from diffprobe.io.loading import safe_load
from diffprobe.training.module import DiffusionModule


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> DiffusionModule:
    """A DiffusionModule with the raw and EMA weights of a diffprobe Lightning checkpoint.

    Needs no network and no pretrained folder: the UNet architecture is stored in the checkpoint.
    The file is loaded as plain data: a checkpoint never runs code.
    """
    path = Path(path)
    checkpoint = safe_load(path, what="checkpoint", map_location=map_location)
    stored = check_checkpoint(path, checkpoint)
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


def module_weights(module: DiffusionModule, weights: Weights = "ema", step: int | None = None) -> DiffusionModel:
    """Copies of the module's EMA (or raw) UNet and caption encoder, eager and on the CPU, as a
    DiffusionModel at ``step`` (default: the module's global step)."""
    # An exported model is a plain eager module: copy it without torch.compile's wrapper.
    with eager(module.unet), module.ema_weights() if weights == "ema" else nullcontext():
        unet = copy.deepcopy(module.unet).to("cpu", memory_format=torch.contiguous_format)
        # diffusers wraps ModelMixin.to in functools.wraps(nn.Module.to), which mypy reads as an unbound function.
        encoder = copy.deepcopy(module.caption_encoder).to("cpu") if module.caption_encoder is not None else None  # type: ignore[arg-type]
    if step is None:  # a module loaded from a checkpoint knows the step it was saved at
        saved = getattr(module, "global_step_at_save", None)
        step = int(module.global_step if saved is None else saved)
    guidance = float(module.hparams["guidance_scale"]) if encoder is not None else 1.0
    return DiffusionModel(unet, DDPMScheduler.from_config(module.scheduler.config), encoder, guidance, step, weights)


def export_module(module: DiffusionModule, out_dir: str | Path, use_ema: bool = True, step: int | None = None) -> Path:
    """Write a diffusers folder of the module (EMA weights by default); refuses a non-empty folder.
    ``step``: the global step recorded in ``diffprobe.json`` (default: the module's)."""
    return folders.save_exported(module_weights(module, "ema" if use_ema else "raw", step), out_dir)
