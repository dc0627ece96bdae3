"""``probe.py export | sample``: a checkpoint as a diffusers folder, or as a grid of samples."""

from __future__ import annotations

import os
from pathlib import Path

from jsonargparse.typing import PositiveInt

from diffprobe.choices import Device, Sampler, Weights
from diffprobe.commands.common import CommandError, as_list, command, flag, new_file, new_folder
from diffprobe.commands.source import load_model, resolve


@command
def export(ckpt: str, out: str | None = None, weights: Weights = "ema") -> Path:
    """Write a checkpoint as a diffusers folder (DDPMPipeline.from_pretrained loads an
    unconditional one).

    Args:
        ckpt: a diffprobe .ckpt, or a run directory (its newest checkpoint)
        out: new folder to write (default: <run>/export-<checkpoint name>, or ./export-<checkpoint name> outside a run)
        weights: export the EMA or the raw weights
    """
    from diffprobe.diffusion.folders import save_exported
    from diffprobe.diffusion.unet import count_parameters
    from diffprobe.io.runs import run_directory

    entry = resolve(ckpt).newest
    if entry.kind != "checkpoint":
        raise CommandError(f"--ckpt {ckpt} is a diffusers folder ({entry.kind}) already; export reads a diffprobe .ckpt or run directory")
    # The default stays inside the checkpoint's run (<run>/checkpoints/x.ckpt -> <run>/export-x); checked
    # before the checkpoint is loaded. abspath, not resolve(): a last.ckpt link keeps its own name.
    path = Path(os.path.abspath(entry.path))
    name = f"export-{path.stem}" + ("-raw" if weights == "raw" else "")  # the EMA export of the same checkpoint keeps its name
    folder = new_folder(Path(out) if out else (run_directory(path) or Path()) / name)
    model = load_model(entry, weights)
    written = save_exported(model, folder)
    print(f"exported {type(model.unet).__name__} with {count_parameters(model.unet):,} parameters ({weights} weights) to {written}")
    return written


@command
def sample(
    ckpt: str, out: str, num: PositiveInt = 16, seed: int = 0, steps: PositiveInt = 100, sampler: Sampler = "ddpm", caption: list[str] | str | None = None,
    guidance: float | None = None, weights: Weights = "ema", device: Device = "auto", scale: PositiveInt = 4,
) -> Path:  # fmt: skip
    """Sample a PNG grid from a checkpoint or export with a fixed seed.

    Args:
        ckpt: a diffprobe .ckpt, a run directory (its newest checkpoint) or a 'probe.py export' folder
        out: new PNG file to write (missing parent folders are made)
        num: number of images
        steps: sampling steps (at most the model's training timesteps)
        caption: captions of a conditional model, cycled to fill --num
        weights: sample with the EMA or the raw weights
        scale: upscale factor of the PNG
    """
    from diffprobe.diffusion import sampling
    from diffprobe.report import viz

    path = new_file(out, ".png")  # before the checkpoint is loaded and sampled: a refusal costs nothing
    model = load_model(resolve(ckpt).newest, weights, device)
    if steps > model.num_train_timesteps:
        raise CommandError(f"--steps {steps}: this model has {model.num_train_timesteps} training timesteps, so it samples in at most that many steps")
    given = as_list(caption)
    captions = [given[i % len(given)] for i in range(num)] if given else None
    if not model.conditional and captions is not None:
        raise CommandError("this checkpoint is an unconditional model: leave out --caption")
    if model.conditional and captions is None:
        raise CommandError(
            "this checkpoint is a conditional model: give --caption 'a large red solid circle ...' (or a list: --caption '[..., ...]')"
        )
    if captions is not None:
        with flag("--caption"):
            model.caption_encoder.tokenizer.check_words(captions)
    scale_of_guidance = model.guidance_scale if guidance is None else guidance
    images = sampling.sample(
        model.unet, model.scheduler, model.caption_encoder, num, seed=seed, num_inference_steps=steps, sampler=sampler, captions=captions,
        guidance_scale=scale_of_guidance,
    )  # fmt: skip
    new_file(path, ".png")  # written meanwhile by something else: still never overwritten
    viz.save_png(viz.image_grid(images), path, scale=scale)
    print(f"wrote {len(images)} samples to {path}")
    return path
