"""DiffusionModel: a UNet with what sampling it needs (noise schedule, caption encoder, guidance
weight), whichever file it came from; and loading one from a diffprobe checkpoint without Lightning.

Every tool that runs a model (probes, explanations, interventions, ``probe.py``) takes a
:class:`DiffusionModel`. The training layer's ``DiffusionModule`` writes the checkpoints read
here; ``diffusion.folders`` reads and writes diffusers folders (exports, pretrained UNets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

from diffprobe.choices import Weights
from diffprobe.diffusion.captions import CaptionEncoder
from diffprobe.diffusion.unet import UNet
from diffprobe.io.loading import LoadError, safe_load

CHECKPOINT_MARKER = "diffprobe"  # the entry every diffprobe training checkpoint carries
UNET_CLASSES = {cls.__name__: cls for cls in (UNet2DModel, UNet2DConditionModel)}
EMA_PREFIX = "ema.copy."  # the EMA averages in a checkpoint's state dict (training.ema.AveragedWeights)


@dataclass
class DiffusionModel:
    """A UNet and what sampling it needs.

    ``scheduler`` is the training (DDPM) noise process; ``noise_process_known`` is False where the
    source stored none and diffusers' default DDPM schedule stands in. ``guidance_scale`` is the
    classifier-free guidance weight the model samples with (1.0 for unconditional models).
    ``step``: the global training step of the weights (0 where the source does not say);
    ``weights``: which of a checkpoint's two sets they are, ``ema`` or ``raw``.
    """

    unet: UNet
    scheduler: DDPMScheduler
    caption_encoder: CaptionEncoder | None = None
    guidance_scale: float = 1.0
    step: int = 0
    weights: Weights = "ema"
    noise_process_known: bool = True

    @property
    def conditional(self) -> bool:
        return self.caption_encoder is not None

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def frozen(self, device: str | torch.device = "cpu") -> DiffusionModel:
        """This model on ``device``, in eval mode, with no parameter requiring gradients (in place)."""
        # As torch Modules: diffusers wraps ModelMixin.to in functools.wraps, which mypy reads as unbound.
        parts: tuple[torch.nn.Module | None, ...] = (self.unet, self.caption_encoder)
        for part in parts:
            if part is not None:
                part.to(device).eval().requires_grad_(False)
        return self

    def empty_caption(self) -> torch.Tensor | None:
        """(1, L, D) the empty caption's context for a conditional UNet (None when unconditional):
        what probes condition on, so they read what the UNet sees in the image, not the caption."""
        return self.caption_encoder.unconditional(1) if self.caption_encoder is not None else None


def trained_parameter_names(unet: torch.nn.Module, caption_encoder: torch.nn.Module | None) -> list[str]:
    """The names of the trained parameters in the order the EMA keeps them (UNet, then encoder)."""
    names = [f"unet.{name}" for name, _ in unet.named_parameters()]
    if caption_encoder is not None:
        names += [f"caption_encoder.{name}" for name, _ in caption_encoder.named_parameters()]
    return names


def upgrade_ema_state(checkpoint: dict[str, Any], names: list[str], prefix: str = EMA_PREFIX) -> None:
    """Checkpoints written before the EMA averages were a submodule kept them as a list in
    ``checkpoint["ema"]["shadow_params"]`` (in ``names``' order): move them into ``state_dict``
    under ``prefix``, in place."""
    shadow = checkpoint.get("ema", {}).pop("shadow_params", None)
    if shadow is None:
        return
    if len(names) != len(shadow):
        raise ValueError(f"the checkpoint's EMA has {len(shadow)} tensors, this model {len(names)}: another architecture")
    checkpoint["state_dict"].update({f"{prefix}{name}": value for name, value in zip(names, shadow)})


def check_checkpoint(path: Path, checkpoint: Any) -> dict[str, Any]:
    """The checkpoint's own record (unet class and config, scheduler config), or a LoadError."""
    if not isinstance(checkpoint, dict) or CHECKPOINT_MARKER not in checkpoint:
        raise LoadError(f"{path} is not a diffprobe checkpoint (no '{CHECKPOINT_MARKER}' entry); train one with train.py")
    stored = checkpoint[CHECKPOINT_MARKER]
    missing = [key for key in ("state_dict", "hyper_parameters") if not isinstance(checkpoint.get(key), dict)]
    missing += [f"{CHECKPOINT_MARKER}.{key}" for key in ("unet_config", "scheduler_config") if not isinstance(stored, dict) or not isinstance(stored.get(key), dict)]
    if missing:
        raise LoadError(f"{path} is not a complete diffprobe checkpoint (missing or malformed: {', '.join(missing)})")
    return stored


def _weights_of(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def load_checkpoint(path: str | Path, weights: Weights = "ema", map_location: str | torch.device = "cpu") -> DiffusionModel:
    """The EMA (or raw) weights of a diffprobe training checkpoint as a :class:`DiffusionModel`.

    Needs no network, no pretrained folder and no Lightning: the architecture is stored in the
    checkpoint, and the file is read as plain data (a checkpoint never runs code). Raises
    FileNotFoundError or LoadError (a ValueError) naming the file.
    """
    path = Path(path)
    checkpoint = safe_load(path, what="checkpoint", map_location=map_location)
    stored = check_checkpoint(path, checkpoint)
    hparams = checkpoint["hyper_parameters"]
    unet_class = UNET_CLASSES.get(str(stored.get("unet_class")), UNet2DConditionModel if hparams.get("conditional") else UNet2DModel)
    unet = unet_class(**{k: v for k, v in stored["unet_config"].items() if not k.startswith("_")})
    encoder = None
    if hparams.get("conditional"):
        encoder = CaptionEncoder(list(hparams["vocabulary"]), int(hparams.get("max_caption_tokens", 16)), unet.config.cross_attention_dim)
    upgrade_ema_state(checkpoint, trained_parameter_names(unet, encoder))
    prefix = EMA_PREFIX if weights == "ema" else ""
    state = checkpoint["state_dict"]
    try:
        unet.load_state_dict(_weights_of(state, f"{prefix}unet."))
        if encoder is not None:
            encoder.load_state_dict(_weights_of(state, f"{prefix}caption_encoder."))
    except RuntimeError as error:  # missing or misshapen tensors
        first = str(error).splitlines()[0]
        raise LoadError(f"{path}: its {weights} weights do not fit the architecture it records ({first})") from error
    guidance = float(hparams.get("guidance_scale", 3.0)) if encoder is not None else 1.0
    scheduler = DDPMScheduler.from_config(stored["scheduler_config"])
    return DiffusionModel(unet.eval(), scheduler, encoder.eval() if encoder else None, guidance, int(checkpoint.get("global_step", 0)), weights)

