"""train.py's two workarounds for what Lightning and jsonargparse offer no public API for, each
pinned by a test that fails loudly when an upgrade changes what it relies on (see
diffprobe/training/cli.py: union_subtype_error, DiffprobeCLI._hold_back_ckpt_path)."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import jsonargparse
import lightning
import lightning.pytorch as pl
import pytest
from jsonargparse import ArgumentParser

from diffprobe.commands.train import train_main
from diffprobe.training.cli import union_subtype_error
from faults import tiny_run_config
from helpers import make_module, make_trainer, shapes_data


class Refuses:
    """A config class that checks its argument in ``__init__``, as diffprobe's classes do."""

    def __init__(self, size: int = 1):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size


def _union_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--thing", type=Refuses | None)  # Union-typed, as LightningCLI's --data is
    return parser


def test_union_subtype_error_is_the_classes_own_error(tmp_path, monkeypatch):
    """If this fails after upgrading jsonargparse (written against 4.53.0), its report of a Union-typed
    value changed: adapt union_subtype_error in diffprobe/training/cli.py."""
    parser = _union_parser()
    config = parser.parse_args(["--thing", f"{__name__}.Refuses", "--thing.size", "0"])
    with pytest.raises(Exception) as built:
        parser.instantiate(config)
    inner = union_subtype_error(built.value)
    assert isinstance(inner, ValueError) and str(inner) == "size must be positive, got 0", (
        f"jsonargparse {jsonargparse.__version__} no longer chains the class's own error: {built.value!r}"
    )
    # train.py names the config's class that refused (from the traceback of that error), not an object it builds.
    monkeypatch.chdir(tmp_path)
    tiny_run_config(tmp_path / "tiny.yaml")
    with pytest.raises(SystemExit, match=r"^error: batch_size must be positive, got 0\n\(refused by ConceptShapesDataModule while"):
        train_main(["fit", "--config", "tiny.yaml", "--data.init_args.batch_size", "0"])
    with pytest.raises(argparse.ArgumentError) as parsed:
        parser.parse_args(["--thing", f"{__name__}.Refuses", "--thing.sise", "1"])
    inner = union_subtype_error(parsed.value)
    assert inner is not None and "sise" in str(inner), f"jsonargparse {jsonargparse.__version__}: {parsed.value!r}"
    assert union_subtype_error(ValueError("something else")) is None


def test_resume_keeps_the_configured_settings(tmp_path, monkeypatch):
    """--ckpt_path is judged by diffprobe's resume rules and the configured settings stand; LightningCLI
    would merge the checkpoint's hyper-parameters into the config. If this fails after upgrading
    Lightning (written against 2.6.6), adapt DiffprobeCLI._hold_back_ckpt_path."""
    monkeypatch.chdir(tmp_path)
    make_trainer(tmp_path, max_steps=2).fit(make_module(learning_rate=1e-3), datamodule=shapes_data())
    checkpoint = tmp_path / "runs/test/version_0/checkpoints/last.ckpt"
    tiny_run_config(tmp_path / "tiny.yaml")
    fitted = {}

    @functools.wraps(pl.Trainer.fit)  # LightningCLI builds fit's flags from its signature
    def fit(trainer, model, **kwargs):
        fitted.update(model=model, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    cli = train_main(["fit", "--config", "tiny.yaml", "--model.learning_rate", "5e-4", "--ckpt_path", str(checkpoint)])
    version = f"lightning {lightning.__version__}"
    assert fitted["model"].hparams.learning_rate == 5e-4, f"{version} merged the checkpoint's learning rate into the config"
    assert fitted["ckpt_path"] == str(checkpoint) and cli.config.fit.ckpt_path == str(checkpoint), f"{version}: ckpt_path lost"
    assert cli.resume is not None and cli.resume.global_step == 2
    assert Path(cli.trainer.log_dir).resolve() == checkpoint.parent.parent.resolve(), "the newest checkpoint continues its run"
