"""``train.py``: LightningCLI with diffprobe's run folders and resume rules.

The real function takes plain arguments and returns the CLI, so tests call it directly:
``train_main(["fit", "--config", ...])``. What ``--ckpt_path`` means (continue the run in place,
or start a new run from an older checkpoint) is decided in ``diffprobe.training.resume``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from typing_extensions import override

from diffprobe.training.datamodules import ImageDataModule
from diffprobe.training.module import DiffusionModule
from diffprobe.training.resume import ResumeSource, architecture_differences, inspect_resume_checkpoint, setting_changes


class RunConfig(SaveConfigCallback):
    """Saves ``config.yaml`` into a new run; a resumed run keeps its first config and gets
    ``config-resume-<n>.yaml`` beside it, n = 1, 2, ... (nothing is overwritten)."""

    resumed_from: str | None = None  # set by DiffprobeCLI when fit resumes inside this run

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.resumed_from and trainer.log_dir and (Path(trainer.log_dir) / self.config_filename).exists():
            count = 1
            while (Path(trainer.log_dir) / f"config-resume-{count}.yaml").exists():
                count += 1
            self.config_filename = f"config-resume-{count}.yaml"
        super().setup(trainer, pl_module, stage)


def _fail(error: Exception) -> SystemExit:
    """A bad input, said in one line before anything was built or written."""
    return SystemExit(f"error: {error}")


class DiffprobeCLI(LightningCLI):
    resume: ResumeSource | None = None  # what --ckpt_path names, checked before anything is built
    _in_place = False  # the resumed run continues in its own TensorBoard run folder

    @override
    def add_arguments_to_parser(self, parser) -> None:
        # The data decides what the model must fit: image size, channels, caption words.
        parser.link_arguments("data.image_size", "model.image_size", apply_on="instantiate")
        parser.link_arguments("data.channels", "model.in_channels", apply_on="instantiate")
        parser.link_arguments("data.vocabulary", "model.vocabulary", apply_on="instantiate")

    @override
    def _parse_ckpt_path(self) -> None:
        # LightningCLI would merge the checkpoint's hyper-parameters into the config here, silently
        # replacing what the user configured (--model.unet, --model.learning_rate ...). diffprobe
        # checks the file instead; instantiate_trainer refuses a model that does not match it.
        self._inspect_ckpt_path()

    def _inspect_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand == "fit" else None
        if self.resume is not None or not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
            return
        try:
            self.resume = inspect_resume_checkpoint(ckpt_path)
        except (OSError, ValueError) as error:
            raise _fail(error) from None

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        logger = config.trainer.get("logger")
        tensorboard = isinstance(logger, Namespace) and logger.get("class_path", "").endswith("TensorBoardLogger")
        self._inspect_ckpt_path()  # again, for a LightningCLI without the _parse_ckpt_path hook
        if self.resume is None:
            return
        source = self.resume
        if tensorboard:
            # hp_metric is a placeholder scalar at step 0: a resumed run would log it at step 0 again.
            logger.init_args.default_hp_metric = False
        self._in_place = source.continues_in_place and tensorboard
        if self._in_place:
            # The run continues in its own folder, whatever name the config gives a new run.
            run_dir = source.run_dir
            logger.init_args.save_dir = str(run_dir.parent.parent)
            logger.init_args.name = run_dir.parent.name
            logger.init_args.version = run_dir.name

    @override
    def instantiate_trainer(self, **kwargs):
        # The model exists (in memory) and nothing was written yet: compare it with the checkpoint.
        if self.resume is not None:
            self._check_resumed_model()
        return super().instantiate_trainer(**kwargs)

    def _check_resumed_model(self) -> None:
        source = self.resume
        differences = architecture_differences(source, self.model)
        if differences:
            raise _fail(
                ValueError(
                    f"--ckpt_path {source.path} holds another model than the one configured: "
                    + "; ".join(differences)
                    + ". Resume with the run's own settings (its config.yaml), or start a new run without --ckpt_path."
                )
            )
        if self._in_place:
            print(
                f"diffprobe: resuming {source.run_dir} at step {source.global_step} (its newest checkpoint); the run continues in place",
                file=sys.stderr,
            )
        elif not source.newest:
            print(
                f"diffprobe: {source.path} (step {source.global_step}) is not the newest checkpoint of {source.run_dir} "
                f"({source.newest_path}); a new run starts from its state and that run is left as it is",
                file=sys.stderr,
            )
        changed = setting_changes(source, self.model)
        if changed:
            print(f"diffprobe: resuming with settings that differ from the checkpoint's: {'; '.join(changed)}", file=sys.stderr)

    @override
    def before_fit(self) -> None:
        # Callbacks that need a TensorBoard logger or an unsharded UNet say so now, not mid-fit.
        for callback in self.trainer.callbacks:
            if hasattr(callback, "check_trainer"):
                try:
                    callback.check_trainer(self.trainer)
                except ValueError as error:
                    raise _fail(error) from None
        # An existing run directory is never written into, unless we resume from one of its checkpoints.
        if not isinstance(self.trainer.logger, (TensorBoardLogger, CSVLogger)):
            return  # only versioned run directories are guarded (no logger: the working directory)
        log_dir = Path(self.trainer.log_dir) if self.trainer.log_dir else None
        if log_dir is None or not log_dir.exists() or not any(log_dir.iterdir()):
            return
        if self.resume is not None and self._in_place and self.resume.run_dir == log_dir.resolve():
            for callback in self.trainer.callbacks:
                if isinstance(callback, RunConfig):
                    callback.resumed_from = str(self.resume.path)
            return
        raise _fail(
            FileExistsError(
                f"run directory {log_dir} already exists and holds files; diffprobe never writes into an existing run. "
                "Leave --trainer.logger.init_args.version unset for a new version, choose another name, or resume "
                f"with --ckpt_path {log_dir}/checkpoints/last.ckpt."
            )
        )


class _NoAdvertisement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_lightning() -> None:
    """What a run printed that is not the user's business: Lightning's tips for its cloud products;
    deprecations inside Lightning itself (its pytree helper calls an API torch deprecated, its CLI a
    jsonargparse parameter); and "checkpoint directory exists and is not empty", which train.py only
    allows when a run continues in its own folder (DiffprobeCLI refuses every other case first)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvertisement) for f in logger.filters):
        logger.addFilter(_NoAdvertisement())
    for message in (r".*isinstance\(treespec, LeafSpec\)", r"\s*skip_none parameter was deprecated", r"Checkpoint directory .* exists and is not empty"):
        warnings.filterwarnings("ignore", message=message, category=Warning)


def train_main(args: list[str] | None = None, run: bool = True) -> DiffprobeCLI:
    """``python train.py fit --config configs/quickstart.yaml`` (all LightningCLI flags work).

    A flag or config value that is wrong (a misspelt or abbreviated key, ``--data.init_args.image_size 24``)
    exits with one message that names it, as the first line, before a run directory or a model exists."""
    import sys

    import jsonargparse

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_lightning()
    # No abbreviations (argparse would read --model.learning_rat as --model.learning_rate); parse errors
    # raised, not printed after a page of usage, so the message below comes first.
    strict = {"allow_abbrev": False, "exit_on_error": False}
    parser_kwargs = {**strict, **{name: dict(strict) for name in DiffprobeCLI.subcommands()}}
    package = Path(jsonargparse.__file__).parent

    def last_frame(error: BaseException):
        trace = error.__traceback__
        while trace is not None and trace.tb_next is not None:
            trace = trace.tb_next
        return trace.tb_frame.f_code if trace is not None else None

    def unwrapped(error: BaseException) -> BaseException | None:
        # jsonargparse reports a union-typed key (--data, --trainer.callbacks) as "Does not validate
        # against any of the Union subtypes ..." and chains the subtype's own error: that one says it.
        cause: BaseException | None = error
        while cause is not None:
            code = last_frame(cause)
            if code is not None and code.co_name == "raise_union_unexpected_value" and cause.__cause__ is not None:
                return cause.__cause__
            cause = cause.__cause__
        return None

    try:
        return DiffprobeCLI(
            DiffusionModule,
            ImageDataModule,
            subclass_mode_data=True,
            save_config_callback=RunConfig,
            parser_kwargs=parser_kwargs,
            args=args,
            run=run,
            trainer_defaults={
                "logger": {
                    "class_path": TensorBoardLogger.__module__ + ".TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": "default"},
                }
            },
        )
    except argparse.ArgumentError as error:
        inner = unwrapped(error)
        head = str(error).splitlines()[0] if str(error).startswith("Parser key") else ""
        message = f"{head} {inner}" if inner is not None and head else str(inner or error)
        # Exit status 2 and stderr, as argparse does for a command line it cannot read.
        print(f"error: {message}\n(python train.py fit --help lists every option)", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as error:
        # A class of the config refused its arguments while being built (data before model and trainer).
        code = last_frame(error)
        inner = unwrapped(error)
        if inner is None or code is None or not Path(code.co_filename).is_relative_to(package):
            raise
        message = str(inner) if isinstance(inner, ValueError) else f"{type(inner).__name__}: {inner}"
        trace, refused_by = inner.__traceback__, "a class of the config"
        while trace is not None:  # the object whose __init__ raised
            if trace.tb_frame.f_code.co_name == "__init__" and "self" in trace.tb_frame.f_locals:
                refused_by = type(trace.tb_frame.f_locals["self"]).__name__
                break
            trace = trace.tb_next
        raise SystemExit(
            f"error: {message}\n(refused by {refused_by} while train.py built the config's objects, before training; no run directory was made)"
        ) from inner
