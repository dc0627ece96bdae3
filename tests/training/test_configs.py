"""Every shipped config parses and builds its model and data (offline: hub sources are swapped for
local copies the tests write)."""


import pytest
import torch

from diffprobe.commands.train import train_main
from diffprobe.training.cli import DiffprobeCLI
from helpers import REPO, in_memory_dataset, write_ddpm_cifar10_folder

# Each has a build test above; test_every_config_is_covered fails for a config added without one.
SHIPPED_CONFIGS = ["quickstart.yaml", "shapes_conditional.yaml", "shapes_reference.yaml", "cifar10_ddpm.yaml", "finetune_ddpm_cifar10.yaml", "shapes_gpu.yaml", "hidden_capabilities.yaml"]


def build(config: str, *overrides: str):
    return train_main(["--config", str(REPO / "configs" / config), "--trainer.enable_progress_bar", "true", *overrides], run=False)


def test_quickstart_config_is_cpu_sized():
    cli = build("quickstart.yaml")
    assert cli.trainer.max_steps <= 600 and cli.datamodule.image_size == 16
    assert type(cli.model.unet).__name__ == "UNet2DModel"


def test_conditional_config_builds_a_caption_model():
    cli = build("shapes_conditional.yaml", "--trainer.accelerator", "cpu")
    assert type(cli.model.unet).__name__ == "UNet2DConditionModel"
    assert cli.model.caption_encoder.tokenizer.words[2:] == cli.datamodule.vocabulary


def test_cifar10_config_builds_with_a_local_copy(tmp_path):
    data = in_memory_dataset().rename_columns({"picture": "img", "colour": "label"})
    data.save_to_disk(str(tmp_path / "cifar"))
    cli = build(
        "cifar10_ddpm.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.precision",
        "32-true",
        "--data.init_args.source",
        str(tmp_path / "cifar"),
        "--data.init_args.batch_size",
        "2",
        "--model.compile",
        "false",
    )
    assert sum(p.numel() for p in cli.model.unet.parameters()) == 35_746_307
    assert cli.model.hparams.channels_last
    assert cli.datamodule.concepts == {"label": ("red", "blue")}


def test_shapes_gpu_config_builds_the_fast_path_with_every_observer():
    overrides = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--data.init_args.train_size", "128", "--data.init_args.heldout_size", "16"]
    cli = build("shapes_gpu.yaml", *overrides)
    assert sum(p.numel() for p in cli.model.unet.parameters()) == 35_746_307
    assert cli.model.hparams.compile and cli.model.hparams.channels_last
    names = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"OnlineProbes", "ProbeMonitor", "AttentionRecorder", "PredictionEvolution", "SampleGrid"} <= names


def test_reference_config_builds_the_conditional_tiny_model_with_live_fidelity():
    cli = build("shapes_reference.yaml", "--data.init_args.train_size", "64", "--data.init_args.heldout_size", "16")
    assert type(cli.model.unet).__name__ == "UNet2DConditionModel"
    assert cli.datamodule.image_size == 16 and cli.model.hparams.learning_rate == 2.0e-3
    names = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"ConceptFidelity", "OnlineProbes", "ProbeMonitor", "SampleGrid"} <= names


def test_hidden_capabilities_config_holds_small_blue_out_and_checkpoints_every_250_steps():
    cli = build("hidden_capabilities.yaml", "--data.init_args.train_size", "64", "--data.init_args.heldout_size", "16", "--data.init_args.colour_contrast", "0.5")
    assert cli.datamodule.design.heldout_combinations == (("small", "blue"),) and cli.datamodule.design.colour_contrast == 0.5
    assert not any(cli.datamodule.design.is_heldout(row) for row in cli.datamodule.train_dataset().labels.tolist())
    checkpoint = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ModelCheckpoint")
    assert checkpoint._every_n_train_steps == 250 and checkpoint.save_top_k == -1


def test_finetune_config_loads_the_pretrained_folder(tmp_path):
    written = write_ddpm_cifar10_folder(tmp_path / "ddpm-cifar10-32")
    cli = build("finetune_ddpm_cifar10.yaml", "--trainer.accelerator", "cpu", "--model.pretrained", str(tmp_path / "ddpm-cifar10-32"))
    assert torch.equal(cli.model.unet.conv_in.weight, written.conv_in.weight)


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_config_is_covered(config):
    assert config in set(SHIPPED_CONFIGS), (
        f"add a build test for {config}"
    )


def parse(config: str):
    """The config as train.py's LightningCLI parser reads it (class paths resolved, init_args
    type-checked, defaults filled in), without building the model, data or trainer."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DiffprobeCLI, "before_instantiate_classes", lambda self: None)
        patch.setattr(DiffprobeCLI, "instantiate_classes", lambda self: None)
        return train_main(["--config", str(REPO / "configs" / config)], run=False).config


@pytest.mark.parametrize("config", SHIPPED_CONFIGS)
def test_every_training_config_probes_while_it_trains(config):
    parsed = parse(config)
    callbacks = {c.class_path: c.init_args for c in parsed.trainer.callbacks}
    max_steps = parsed.trainer.max_steps
    monitor = callbacks.get("diffprobe.training.callbacks.ProbeMonitor")
    assert monitor is not None, f"{config} has no ProbeMonitor among {sorted(callbacks)}"
    assert monitor.every_n_steps <= max_steps, "the probe set is evaluated during the run, not only after"
    online = callbacks.get("diffprobe.training.callbacks.OnlineProbes")
    # The compiled training forward hands out the features too: every config probes online.
    assert online is not None, f"{config} has no OnlineProbes"
    assert online.log_every_n_steps <= max_steps
