"""``probe.py`` (checkpoint tools); ``train.py`` lives in ``diffprobe.commands.train`` and is
re-exported here.

The real functions take plain arguments and return results, so tests call them directly:
``probe_main(["export", "--ckpt", ...])``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from diffprobe.commands.train import DiffprobeCLI, RunConfig, train_main  # noqa: F401  (train.py's API, re-exported)
from diffprobe.explain_flags import add_explain_parsers, apply_config, apply_repeated
from diffprobe.offline import add_linear_parser

# ---- probe.py ---------------------------------------------------------------------------------


def _load_module(path: str):
    """The checkpoint's module; a clean exit naming the file when it is missing, damaged or unsafe."""
    from diffprobe import checkpoint

    try:
        return checkpoint.load_module(path)
    except (FileNotFoundError, checkpoint.LoadError) as error:
        raise SystemExit(str(error)) from error


def _export_command(ns: argparse.Namespace) -> Path:
    from diffprobe import checkpoint

    # The default stays inside the checkpoint's run (<run>/checkpoints/x.ckpt -> <run>/export-x), or in
    # the working directory for a checkpoint outside a run; checked before the checkpoint is loaded.
    ckpt = Path(os.path.abspath(ns.ckpt))  # not resolve(): a last.ckpt link keeps its own name
    in_run = ckpt.parent.name == "checkpoints"
    out = Path(ns.out) if ns.out else (ckpt.parent.parent if in_run else Path()) / f"export-{ckpt.stem}"
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise FileExistsError(f"export folder {out} exists{' and is not empty' if out.is_dir() else ' (a file)'}; choose a new --out")
    module = _load_module(ns.ckpt)
    path = checkpoint.export(module, out, use_ema=not ns.raw)
    print(f"exported {module.describe()} ({'raw' if ns.raw else 'EMA'} weights) to {path}")
    return path


def _sample_command(ns: argparse.Namespace) -> Path:
    import torch

    from diffprobe import viz

    # Checked before the checkpoint is loaded and sampled: a refusal costs nothing.
    out = Path(ns.out)
    if out.exists():
        raise SystemExit(f"--out {out} exists; choose another --out (diffprobe does not overwrite files)")
    if out.suffix.lower() != ".png":
        raise SystemExit(f"--out {out} must be a .png file name, e.g. {out.with_suffix('.png')}")
    for flag, value in (("--num", ns.num), ("--steps", ns.steps), ("--scale", ns.scale)):
        if value < 1:
            raise SystemExit(f"{flag} must be at least 1, got {value}")
    module = _load_module(ns.ckpt).to(ns.device)
    captions = [ns.caption[i % len(ns.caption)] for i in range(ns.num)] if ns.caption else None
    if module.caption_encoder is not None and captions is None:
        raise SystemExit("this checkpoint is a conditional model: give --caption 'a large red solid circle ...'")
    images = module.sample(
        ns.num, seed=ns.seed, num_inference_steps=ns.steps, sampler=ns.sampler, captions=captions, guidance_scale=ns.guidance, use_ema=not ns.raw
    )
    if out.exists():  # written meanwhile by something else: still never overwritten
        raise SystemExit(f"--out {out} exists; choose another --out (diffprobe does not overwrite files)")
    viz.save_png(viz.image_grid(images.to(torch.float32)), out, scale=ns.scale)
    print(f"wrote {len(images)} samples to {out}")
    return out


def probe_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe.py", description="diffprobe tools that run on checkpoints.", allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", allow_abbrev=False, help="write a checkpoint as a diffusers folder (DDPMPipeline.from_pretrained loads it)")
    export.add_argument("--ckpt", required=True, help="a diffprobe .ckpt file")
    export.add_argument("--out", help="new folder to write (default: <run>/export-<ckpt name>, or ./export-<ckpt name> for a checkpoint outside a run)")
    export.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA weights")
    export.set_defaults(handler=_export_command)

    sample = commands.add_parser("sample", allow_abbrev=False, help="sample a PNG grid from a checkpoint with a fixed seed")
    sample.add_argument("--ckpt", required=True, help="a diffprobe .ckpt file")
    sample.add_argument("--out", required=True, help="new PNG file to write (missing parent folders are made)")
    sample.add_argument("--num", type=int, default=16, help="number of images")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--steps", type=int, default=100, help="sampling steps")
    sample.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    sample.add_argument("--caption", action="append", help="caption for a conditional model (repeat the flag for several; cycled to fill --num)")
    sample.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    sample.add_argument("--raw", action="store_true", help="sample with raw instead of EMA weights")
    sample.add_argument("--device", default="cpu")
    sample.add_argument("--scale", type=int, default=4, help="upscale factor of the PNG")
    sample.set_defaults(handler=_sample_command)
    add_linear_parser(commands)
    parser.explain_parsers = add_explain_parsers(commands)
    return parser


def probe_main(args: list[str] | None = None):

    args = list(sys.argv[1:] if args is None else args)
    parser = probe_parser()
    repeated = apply_config(parser.explain_parsers[args[0]], args) if args and args[0] in parser.explain_parsers else {}
    ns = parser.parse_args(args)
    apply_repeated(ns, repeated)
    return ns.handler(ns)
