"""Command lines: ``train.py`` (LightningCLI) and ``probe.py`` (checkpoint tools).

The real functions take plain arguments and return results, so tests call them directly:
``train_main(["fit", "--config", ...])`` and ``probe_main(["export", "--ckpt", ...])``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from typing_extensions import override

from diffprobe.data.module import ImageDataModule
from diffprobe.explain_flags import add_explain_parsers, apply_config, apply_repeated
from diffprobe.module import DiffusionModule
from diffprobe.offline import add_linear_parser


class RunConfig(SaveConfigCallback):
    """Saves ``config.yaml`` into a new run; a resumed run keeps its first config and gets
    ``config-resume-step<N>.yaml`` beside it (nothing is overwritten)."""

    resumed_from: str | None = None  # set by DiffprobeCLI when fit resumes inside this run

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.resumed_from and trainer.log_dir and (Path(trainer.log_dir) / self.config_filename).exists():
            count = 1
            while (Path(trainer.log_dir) / f"config-resume-{count}.yaml").exists():
                count += 1
            self.config_filename = f"config-resume-{count}.yaml"
        super().setup(trainer, pl_module, stage)


def _run_dir_of_checkpoint(ckpt_path: str | None) -> Path | None:
    """``runs/<name>/version_<k>`` when ``ckpt_path`` is that run's newest checkpoint (so training
    can continue in place); None otherwise: resuming from an older checkpoint starts a new version,
    so the run's later history is never overlapped."""
    from diffprobe.checkpoint import checkpoint_step

    if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
        return None
    path = Path(ckpt_path).resolve()
    if path.parent.name != "checkpoints" or not path.is_file():
        return None
    if path.name != "last.ckpt":
        steps = [checkpoint_step(p) for p in path.parent.glob("step=*.ckpt")]
        if steps and checkpoint_step(path) < max(steps):
            return None
    return path.parent.parent


class DiffprobeCLI(LightningCLI):
    @override
    def add_arguments_to_parser(self, parser) -> None:
        # The data decides what the model must fit: image size, channels, caption words.
        parser.link_arguments("data.image_size", "model.image_size", apply_on="instantiate")
        parser.link_arguments("data.channels", "model.in_channels", apply_on="instantiate")
        parser.link_arguments("data.vocabulary", "model.vocabulary", apply_on="instantiate")

    @override
    def before_instantiate_classes(self) -> None:
        # Resuming from runs/<name>/version_k/checkpoints/x.ckpt continues that run's log directory.
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        run_dir = _run_dir_of_checkpoint(config.get("ckpt_path"))
        logger = config.trainer.get("logger")
        if run_dir is None or not isinstance(logger, Namespace):
            return
        if logger.get("class_path", "").endswith("TensorBoardLogger"):
            logger.init_args.save_dir = str(run_dir.parent.parent)
            logger.init_args.name = run_dir.parent.name
            logger.init_args.version = run_dir.name

    @override
    def before_fit(self) -> None:
        # An existing run directory is never written into, unless we resume from one of its checkpoints.
        if not isinstance(self.trainer.logger, (TensorBoardLogger, CSVLogger)):
            return  # only versioned run directories are guarded (no logger: the working directory)
        log_dir = Path(self.trainer.log_dir) if self.trainer.log_dir else None
        ckpt_run = _run_dir_of_checkpoint(self.config.fit.get("ckpt_path"))
        if log_dir is None or not log_dir.exists() or not any(log_dir.iterdir()):
            return
        if ckpt_run is not None and ckpt_run == log_dir.resolve():
            for callback in self.trainer.callbacks:
                if isinstance(callback, RunConfig):
                    callback.resumed_from = self.config.fit.ckpt_path
            return
        raise FileExistsError(
            f"run directory {log_dir} already exists and holds files; diffprobe never writes into an existing run. "
            "Leave --trainer.logger.init_args.version unset for a new version, choose another name, or resume "
            f"with --ckpt_path {log_dir}/checkpoints/last.ckpt."
        )


def train_main(args: list[str] | None = None, run: bool = True) -> DiffprobeCLI:
    """``python train.py fit --config configs/quickstart.yaml`` (all LightningCLI flags work)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return DiffprobeCLI(
        DiffusionModule,
        ImageDataModule,
        subclass_mode_data=True,
        save_config_callback=RunConfig,
        args=args,
        run=run,
        trainer_defaults={"logger": {"class_path": TensorBoardLogger.__module__ + ".TensorBoardLogger", "init_args": {"save_dir": "runs", "name": "default"}}},
    )


# ---- probe.py ---------------------------------------------------------------------------------


def _export_command(ns: argparse.Namespace) -> Path:
    from diffprobe import checkpoint

    module = checkpoint.load_module(ns.ckpt)
    out = Path(ns.out) if ns.out else Path(ns.ckpt).resolve().parent.parent / f"export-{Path(ns.ckpt).stem}"
    path = checkpoint.export(module, out, use_ema=not ns.raw)
    print(f"exported {module.describe()} ({'raw' if ns.raw else 'EMA'} weights) to {path}")
    return path


def _sample_command(ns: argparse.Namespace) -> Path:
    import torch

    from diffprobe import checkpoint, viz

    module = checkpoint.load_module(ns.ckpt).to(ns.device)
    captions = [ns.caption[i % len(ns.caption)] for i in range(ns.num)] if ns.caption else None
    if module.caption_encoder is not None and captions is None:
        raise SystemExit("this checkpoint is a conditional model: give --caption 'a large red solid circle ...'")
    images = module.sample(
        ns.num, seed=ns.seed, num_inference_steps=ns.steps, sampler=ns.sampler, captions=captions, guidance_scale=ns.guidance, use_ema=not ns.raw
    )
    out = Path(ns.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose another --out (diffprobe does not overwrite files)")
    viz.save_png(viz.image_grid(images.to(torch.float32)), out, scale=ns.scale)
    print(f"wrote {len(images)} samples to {out}")
    return out


def probe_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe.py", description="diffprobe tools that run on checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="write a checkpoint as a diffusers folder (DDPMPipeline.from_pretrained loads it)")
    export.add_argument("--ckpt", required=True, help="a diffprobe .ckpt file")
    export.add_argument("--out", help="new folder to write (default: <run>/export-<ckpt name>)")
    export.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA weights")
    export.set_defaults(handler=_export_command)

    sample = commands.add_parser("sample", help="sample a PNG grid from a checkpoint with a fixed seed")
    sample.add_argument("--ckpt", required=True, help="a diffprobe .ckpt file")
    sample.add_argument("--out", required=True, help="PNG file to write")
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
    import sys

    args = list(sys.argv[1:] if args is None else args)
    parser = probe_parser()
    repeated = apply_config(parser.explain_parsers[args[0]], args) if args and args[0] in parser.explain_parsers else {}
    ns = parser.parse_args(args)
    apply_repeated(ns, repeated)
    return ns.handler(ns)
