"""train.py's LightningCLI: diffprobe's run folders, resume rules and one-line refusals.

``diffprobe.commands.train.train_main`` builds it; tests call that. What ``--ckpt_path`` means
(continue the run in place, or start a new run from an older checkpoint) is decided in
``diffprobe.training.resume``; ``--config`` also takes the name of a shipped config
(``diffprobe.configs``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from jsonargparse import Namespace
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from typing_extensions import override

from diffprobe.configs import ConfigFile, bundled_names
from diffprobe.training.datamodules import ImageDataModule
from diffprobe.training.module import DiffusionModule
from diffprobe.training.resume import (
    ResumeSource,
    architecture_differences,
    inspect_resume_checkpoint,
    newest_run_checkpoint,
    setting_changes,
)

__all__ = ["DiffprobeCLI", "RunConfig", "build_cli", "quiet_lightning", "union_subtype_error"]


class RunConfig(SaveConfigCallback):
    """Saves ``config.yaml`` into a new run; a resumed run keeps its first config and gets
    ``config-resume-<n>.yaml`` beside it, n = 1, 2, ... (nothing is overwritten)."""

    resumed_from: str | None = None  # set by DiffprobeCLI when fit resumes inside this run

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.resumed_from and trainer.log_dir and (Path(trainer.log_dir) / self.config_filename).exists():
            count = 1
            while (Path(trainer.log_dir) / f"config-resume-{count}.yaml").exists():
                count += 1
            self.config_filename = f"config-resume-{count}.yaml"
        super().setup(trainer, pl_module, stage)


def _fail(error: Exception) -> SystemExit:
    """A bad input, said in one line before anything was built or written."""
    return SystemExit(f"error: {error}")


# Written against jsonargparse 4.53.0, which has no public way to reach the error below. A value of a
# Union-typed key (--data, --trainer.logger, each of --trainer.callbacks) that no subtype takes (a
# misspelt init arg, a class whose __init__ refused its arguments) is reported as "Does not validate
# against any of the Union subtypes" with every subtype's error inlined, a page long, raised `from` the
# first subtype's own error: the one that says what is wrong. tests/training/test_cli_workarounds.py
# (test_union_subtype_error_is_the_classes_own_error) fails when an upgrade changes this.
_UNION_ERROR = "Does not validate against any of the Union subtypes"


def union_subtype_error(error: BaseException) -> BaseException | None:
    """The first subtype's own error inside jsonargparse's Union report in ``error``'s cause chain, or
    None when ``error`` is not such a report."""
    link: BaseException | None = error
    while link is not None:
        if str(link).startswith(_UNION_ERROR) and link.__cause__ is not None:
            return link.__cause__
        link = link.__cause__
    return None


def _refused_by(error: BaseException) -> str:
    """The class whose ``__init__`` raised ``error`` (the outermost such frame: the config's class, not
    an object it builds), from the traceback Python keeps."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            return type(frame.f_locals["self"]).__name__
    return "a class of the config"


def _program() -> str:
    name = Path(sys.argv[0]).name
    return name if name.startswith("diffprobe-") else "python train.py"


class DiffprobeCLI(LightningCLI):
    resume: ResumeSource | None = None  # what --ckpt_path names, checked before anything is built
    _ckpt_path: str | None = None  # held back from LightningCLI (see _hold_back_ckpt_path)
    _in_place = False  # the resumed run continues in its own TensorBoard run folder

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # LightningCLI's parser, with a --config that also takes a shipped config's name.
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        parser = self.parser_class(**kwargs)
        shipped = ", ".join(bundled_names())
        parser.add_argument("-c", "--config", action=ConfigFile, help=f"A YAML config file, or the name of one diffprobe ships ({shipped}).")
        return parser

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The data decides what the model must fit: image size, channels, caption words.
        parser.link_arguments("data.image_size", "model.image_size", apply_on="instantiate")
        parser.link_arguments("data.channels", "model.in_channels", apply_on="instantiate")
        parser.link_arguments("data.vocabulary", "model.vocabulary", apply_on="instantiate")

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as error:
            # A union-typed key (--data ...) is reported as a page of every subtype's errors: say the one
            # that names the wrong key, first, with exit status 2 on stderr as argparse does.
            inner = union_subtype_error(error)
            head = str(error).splitlines()[0] if str(error).startswith("Parser key") else ""
            message = f"{head} {inner}" if inner is not None and head else str(inner or error)
            print(f"error: {message}\n({_program()} fit --help lists every option)", file=sys.stderr)
            raise SystemExit(2) from None
        self._hold_back_ckpt_path()
        self._inspect_ckpt_path()

    def _hold_back_ckpt_path(self) -> None:
        # Written against lightning 2.6.6. Right after parse_arguments, LightningCLI.__init__ merges the
        # hyper-parameters of the checkpoint that ckpt_path names into the config (the private
        # _parse_ckpt_path; no switch turns it off), silently replacing what the user configured
        # (--model.unet, --model.learning_rate ...) and unpickling the file before diffprobe checked it.
        # So the path leaves the config here and comes back in before_instantiate_classes; diffprobe's
        # resume rules judge it instead. tests/training/test_cli_workarounds.py
        # (test_resume_keeps_the_configured_settings) fails when an upgrade merges them anyway.
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._ckpt_path = self.config[subcommand].get("ckpt_path")
            self.config[subcommand].ckpt_path = None

    def _inspect_ckpt_path(self) -> None:
        ckpt_path = self._ckpt_path if self.config.get("subcommand") == "fit" else None
        if ckpt_path == "last":
            ckpt_path = self._ckpt_path = self._newest_run_checkpoint()
        if not ckpt_path or ckpt_path in ("best", "hpc", "registry"):
            return
        try:
            self.resume = inspect_resume_checkpoint(ckpt_path)
        except (OSError, ValueError) as error:
            raise _fail(error) from None

    def _newest_run_checkpoint(self) -> str | None:
        """``--ckpt_path last``: the newest checkpoint of the newest run of the configured logger's
        save_dir/name (so a job script uses one command for its first start and every requeue);
        None, said, when there is none yet. Lightning's own "last" looks only in the new run's folder."""
        logger = self.config["fit"].trainer.get("logger")
        init = logger.get("init_args") if isinstance(logger, Namespace) else None
        if init is None or not str(logger.get("class_path", "")).endswith(("TensorBoardLogger", "CSVLogger")):
            raise _fail(ValueError("--ckpt_path last finds the run by the logger's save_dir and name: configure a TensorBoardLogger, or give a checkpoint file"))
        runs = Path(init.get("save_dir") or ".") / str(init.get("name") or "lightning_logs")
        found = newest_run_checkpoint(runs)
        if found is None:
            print(f"diffprobe: --ckpt_path last: no run in {runs} has a checkpoint yet; starting a new run", file=sys.stderr)
            return None
        print(f"diffprobe: --ckpt_path last: {found}, the newest checkpoint of the newest run in {runs}", file=sys.stderr)
        return str(found)

    @override
    def before_instantiate_classes(self) -> None:
        if self.subcommand and self._ckpt_path is not None:
            self.config[self.subcommand].ckpt_path = self._ckpt_path
        if self.resume is None:
            return
        logger = self.config[self.subcommand].trainer.get("logger")
        tensorboard = isinstance(logger, Namespace) and logger.get("class_path", "").endswith("TensorBoardLogger")
        if tensorboard:
            # hp_metric is a placeholder scalar at step 0: a resumed run would log it at step 0 again.
            logger.init_args.default_hp_metric = False
        run_dir = self.resume.run_dir
        self._in_place = self.resume.continues_in_place and tensorboard and run_dir is not None
        if self._in_place and run_dir is not None:
            # The run continues in its own folder, whatever name the config gives a new run.
            logger.init_args.save_dir = str(run_dir.parent.parent)
            logger.init_args.name = run_dir.parent.name
            logger.init_args.version = run_dir.name

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            # A class of the config refused its arguments while being built (data before model and trainer).
            inner = union_subtype_error(error)
            if inner is None:
                raise
            message = str(inner) if isinstance(inner, ValueError) else f"{type(inner).__name__}: {inner}"
            raise SystemExit(
                f"error: {message}\n(refused by {_refused_by(inner)} while the config's objects were built, "
                "before training; no run directory was made)"
            ) from inner

    @override
    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        # The model exists (in memory) and nothing was written yet: compare it with the checkpoint.
        if self.resume is not None:
            self._check_resumed_model(self.resume)
        return super().instantiate_trainer(**kwargs)

    def _check_resumed_model(self, source: ResumeSource) -> None:
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

    def before_fit(self) -> None:  # LightningCLI calls before_<subcommand> by name (no base method)
        # Callbacks that need a TensorBoard logger or an unsharded UNet say so now, not mid-fit.
        # Trainer.callbacks is set by Lightning's callback connector, which its type does not declare.
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
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
            for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
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


def build_cli(args: ArgsType = None, run: bool = True) -> DiffprobeCLI:
    """The CLI for ``args`` (``sys.argv`` when None), built and, with ``run``, run. No abbreviations
    (argparse would read --model.learning_rat as --model.learning_rate), and parse errors raised, not
    printed after a page of usage, so DiffprobeCLI says the one that matters first."""
    strict = {"allow_abbrev": False, "exit_on_error": False}
    return DiffprobeCLI(
        DiffusionModule,
        ImageDataModule,
        subclass_mode_data=True,
        save_config_callback=RunConfig,
        parser_kwargs={**strict, **{name: dict(strict) for name in DiffprobeCLI.subcommands()}},
        args=args,
        run=run,
        trainer_defaults={
            "logger": {
                "class_path": TensorBoardLogger.__module__ + ".TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "default"},
            }
        },
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
