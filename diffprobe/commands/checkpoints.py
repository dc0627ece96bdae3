"""``probe.py export | sample``: a checkpoint as a diffusers folder, or as a grid of samples."""

from __future__ import annotations

import os
from pathlib import Path

from jsonargparse.typing import PositiveInt

from diffprobe.choices import Sampler
from diffprobe.commands.common import CommandError, Device, as_list, command, new_file, new_folder
from diffprobe.commands.source import load_checkpoint, resolve


def _checkpoint(ckpt: str):
    """The newest diffprobe checkpoint ``ckpt`` names (a file or a run directory)."""
    weights = resolve(ckpt).newest
    if weights.kind != "checkpoint":
        raise CommandError(f"--ckpt {ckpt} is a diffusers folder ({weights.kind}); this command reads a diffprobe .ckpt or run directory")
    return weights


@command
def export(ckpt: str, out: str | None = None, raw: bool = False) -> Path:
    """Write a checkpoint as a diffusers folder (DDPMPipeline.from_pretrained loads an
    unconditional one).

    Args:
        ckpt: a diffprobe .ckpt, or a run directory (its newest checkpoint)
        out: new folder to write (default: <run>/export-<checkpoint name>, or ./export-<checkpoint name> outside a run)
        raw: export the raw weights instead of the EMA weights
    """
    from diffprobe import checkpoint

    weights = _checkpoint(ckpt)
    # The default stays inside the checkpoint's run (<run>/checkpoints/x.ckpt -> <run>/export-x); checked
    # before the checkpoint is loaded. abspath, not resolve(): a last.ckpt link keeps its own name.
    path = Path(os.path.abspath(weights.path))
    name = f"export-{path.stem}" + ("-raw" if raw else "")  # the EMA export of the same checkpoint keeps its name
    folder = new_folder(Path(out) if out else (checkpoint.run_directory(path) or Path()) / name)
    module = load_checkpoint(weights)
    written = checkpoint.export(module, folder, use_ema=not raw)
    print(f"exported {module.describe()} ({'raw' if raw else 'EMA'} weights) to {written}")
    return written


@command
def sample(
    ckpt: str, out: str, num: PositiveInt = 16, seed: int = 0, steps: PositiveInt = 100, sampler: Sampler = "ddpm", caption: list[str] | str | None = None,
    guidance: float | None = None, raw: bool = False, device: Device = "cpu", scale: PositiveInt = 4,
) -> Path:  # fmt: skip
    """Sample a PNG grid from a checkpoint with a fixed seed.

    Args:
        ckpt: a diffprobe .ckpt, or a run directory (its newest checkpoint)
        out: new PNG file to write (missing parent folders are made)
        num: number of images
        steps: sampling steps
        caption: captions of a conditional model, cycled to fill --num
        raw: sample with the raw instead of the EMA weights
        scale: upscale factor of the PNG
    """
    import torch

    from diffprobe import viz

    path = new_file(out, ".png")  # before the checkpoint is loaded and sampled: a refusal costs nothing
    module = load_checkpoint(_checkpoint(ckpt)).to(device)
    given = as_list(caption)
    captions = [given[i % len(given)] for i in range(num)] if given else None
    if module.caption_encoder is None and captions is not None:
        raise CommandError("this checkpoint is an unconditional model: leave out --caption")
    if module.caption_encoder is not None and captions is None:
        raise CommandError(
            "this checkpoint is a conditional model: give --caption 'a large red solid circle ...' (or a list: --caption '[..., ...]')"
        )
    if captions is not None:
        try:
            module.caption_encoder.tokenizer.check_words(captions)
        except ValueError as error:
            raise CommandError(f"--caption: {error}") from None
    images = module.sample(
        num, seed=seed, num_inference_steps=steps, sampler=sampler, captions=captions, guidance_scale=guidance, use_ema=not raw
    )
    new_file(path, ".png")  # written meanwhile by something else: still never overwritten
    viz.save_png(viz.image_grid(images.to(torch.float32)), path, scale=scale)
    print(f"wrote {len(images)} samples to {path}")
    return path
