"""What ``--ckpt`` names, resolved once for every probe.py command.

``--ckpt`` may be a diffprobe ``.ckpt``, a run directory (its checkpoints in step order), a folder
written by ``probe.py export`` (or any diffusers DDPM pipeline folder), a bare diffusers UNet
folder, or a Stable Diffusion pipeline folder. :func:`resolve` says which, before anything heavy
is loaded; the loaders below turn one entry into the model a command needs.
"""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from diffprobe.commands.common import CommandError, flag

Kind = Literal["checkpoint", "export", "unet", "stable-diffusion"]

_WHAT = (
    "Give a diffprobe .ckpt or run directory, a folder written by 'probe.py export' (or another diffusers DDPM pipeline), "
    "a diffusers UNet folder, or a Stable Diffusion folder"
)


@dataclass
class Weights:
    """One set of weights a command runs on."""

    name: str  # the checkpoint file's or folder's name: the rows of probes.csv are keyed by it
    path: Path
    kind: Kind
    step: int  # the global step the weights were saved at (0 when the folder does not say)


@dataclass
class Source:
    """What ``--ckpt`` named: its weights (several for a run directory, in step order) and the
    run directory it belongs to, if any (where outputs and TensorBoard scalars go by default)."""

    path: Path
    weights: list[Weights]
    run_dir: Path | None

    @property
    def newest(self) -> Weights:
        return self.weights[-1]


def _folder_kind(path: Path) -> Kind | None:
    from diffprobe.explain.stable_diffusion import is_stable_diffusion_folder

    if is_stable_diffusion_folder(path):
        return "stable-diffusion"
    if (path / "unet" / "config.json").is_file():
        return "export"
    if (path / "config.json").is_file():
        return "unet"
    return None


def resolve(ckpt: str | Path) -> Source:
    """The weights ``ckpt`` names; a CommandError saying what to give when it names none."""
    from diffprobe import checkpoint

    path = Path(ckpt).expanduser()
    if not path.exists():
        from diffprobe.explain.stable_diffusion import DOWNLOAD_HINT

        raise CommandError(f"--ckpt {path} does not exist. {_WHAT} (to get one, {DOWNLOAD_HINT.format(folder='<folder>')})")
    if path.is_dir():
        kind = _folder_kind(path)
        if kind is not None:
            step = checkpoint.exported_step(path) if kind == "export" else None
            return Source(path, [Weights(path.name, path, kind, step or 0)], None)
    try:
        files = checkpoint.find_checkpoints(path)
    except FileNotFoundError as error:
        raise CommandError(f"--ckpt {path}: {error}. {_WHAT}") from error
    folders = sorted({str(p.parent) for p in files})
    if len(folders) > 1:  # e.g. runs/quickstart/ holding version_0, version_1, ...: which run is meant?
        raise CommandError(f"--ckpt {path} holds the checkpoints of several runs ({', '.join(folders)}); give one run directory or checkpoint")
    # Lightning's file names carry the step; a file without one (last.ckpt) is read for it.
    weights = [Weights(p.name, p, "checkpoint", max(checkpoint.checkpoint_step(p), 0)) for p in files]
    resolved = path.resolve()
    run_dir = checkpoint.run_directory(resolved.parent if resolved.is_dir() and resolved.name == "checkpoints" else resolved)
    return Source(path, weights, run_dir)


def load_checkpoint(weights: Weights, map_location: str = "cpu"):
    """The DiffusionModule of a diffprobe checkpoint; damaged, foreign or unsafe files are named."""
    from diffprobe import checkpoint

    try:
        return checkpoint.load_module(weights.path, map_location=map_location)
    except (FileNotFoundError, checkpoint.LoadError) as error:
        raise CommandError(str(error)) from error


@dataclass
class DiffusionParts:
    """A UNet with what sampling it needs: eval mode, frozen, on the command's device."""

    unet: object
    scheduler: object  # the training (DDPM) scheduler
    caption_encoder: object | None
    guidance_scale: float
    step: int


def _unet_class(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return None


def load_parts(weights: Weights, *, raw: bool = False, device: str = "cpu", raw_flag: str = "--raw true") -> DiffusionParts:
    """The UNet, scheduler and caption encoder of diffprobe weights (EMA unless ``raw``, which the
    command spells ``raw_flag``)."""
    if raw and weights.kind != "checkpoint":
        raise CommandError(
            f"{raw_flag}: {weights.path} is a diffusers folder, which holds one set of weights; give a diffprobe .ckpt for the raw ones"
        )
    if weights.kind == "stable-diffusion":
        raise CommandError(f"--ckpt {weights.path} is a Stable Diffusion pipeline; this command needs a diffprobe model (pixel-space UNet)")
    if weights.kind == "checkpoint":
        module = load_checkpoint(weights)
        with module.ema_weights() if not raw else nullcontext():  # copies taken inside keep the EMA weights
            unet = copy.deepcopy(module.unet)
            encoder = copy.deepcopy(module.caption_encoder)
        parts = DiffusionParts(unet, module.scheduler, encoder, module.hparams.guidance_scale, module.global_step_at_save)
    elif weights.kind == "export":
        from diffprobe import checkpoint

        with flag(f"--ckpt {weights.path}"):
            if _unet_class(weights.path / "unet") == "UNet2DConditionModel" and not (weights.path / "caption_encoder").is_dir():
                raise ValueError("a conditional UNet without diffprobe's caption_encoder/ (not a folder 'probe.py export' wrote): nothing here encodes its prompts")
            exported = checkpoint.load_exported(weights.path)
        parts = DiffusionParts(exported.unet, exported.scheduler, exported.caption_encoder, exported.guidance_scale, weights.step)
    else:  # a bare UNet folder: diffusers' default DDPM schedule unless a scheduler config sits beside it
        from diffusers import DDPMScheduler, UNet2DConditionModel

        from diffprobe.unet import load_pretrained

        if _unet_class(weights.path) == UNet2DConditionModel.__name__:
            raise CommandError(
                f"--ckpt {weights.path} is a bare conditional UNet without its caption encoder; give the folder 'probe.py export' wrote, "
                "which holds both"
            )
        with flag(f"--ckpt {weights.path}"):
            loaded = load_pretrained(str(weights.path), conditional=False)
        parts = DiffusionParts(loaded.unet, loaded.scheduler or DDPMScheduler(), None, 1.0, 0)
    for part in (parts.unet, parts.caption_encoder):
        if part is not None:
            part.to(device).eval().requires_grad_(False)
    return parts


def load_explain_model(weights: Weights, *, device: str = "cpu", raw: bool = False, guidance: float | None = None, dtype: str = "float32"):
    """(ExplainModel, global step) for the explanation tools: a diffprobe model or Stable Diffusion.
    ``dtype``: Stable Diffusion's weights (float16 / bfloat16 halve its memory on a GPU)."""
    import torch

    from diffprobe.explain.model import from_parts

    if weights.kind == "stable-diffusion":
        from diffprobe.explain.stable_diffusion import load_stable_diffusion

        if raw:
            raise CommandError(f"--raw true: {weights.path} is a Stable Diffusion pipeline, which holds one set of weights")
        with flag(f"--ckpt {weights.path}"):
            return load_stable_diffusion(
                weights.path, guidance_scale=7.5 if guidance is None else guidance, device=device, dtype=getattr(torch, dtype)
            ), 0
    parts = load_parts(weights, raw=raw, device=device)
    scale = parts.guidance_scale if guidance is None else guidance
    return from_parts(parts.unet, parts.scheduler.config, parts.caption_encoder, scale), parts.step


def require_conditional(model, needs: str) -> None:
    if not model.conditional:
        raise CommandError(
            f"{needs} needs a conditional model (prompts whose tokens can be relevant); this checkpoint is unconditional. "
            "Train one with: python train.py fit --config configs/shapes_conditional.yaml"
        )
