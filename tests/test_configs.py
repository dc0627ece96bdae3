"""Every shipped config parses and builds its model and data (offline: hub sources are swapped for
local copies the tests write)."""

from pathlib import Path

import pytest
import torch

from conftest import in_memory_dataset, write_ddpm_cifar10_folder
from diffprobe.cli import train_main

REPO = Path(__file__).resolve().parents[1]


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
        "cifar10_ddpm.yaml", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
        "--data.init_args.source", str(tmp_path / "cifar"), "--data.init_args.batch_size", "2",
        "--model.compile", "false",
    )
    assert sum(p.numel() for p in cli.model.unet.parameters()) == 35_746_307
    assert cli.model.hparams.channels_last
    assert cli.datamodule.concepts == {"label": ("red", "blue")}


def test_finetune_config_loads_the_pretrained_folder(tmp_path):
    written = write_ddpm_cifar10_folder(tmp_path / "ddpm-cifar10-32")
    cli = build("finetune_ddpm_cifar10.yaml", "--trainer.accelerator", "cpu", "--model.pretrained", str(tmp_path / "ddpm-cifar10-32"))
    assert torch.equal(cli.model.unet.conv_in.weight, written.conv_in.weight)


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_config_is_covered(config):
    assert config in {"quickstart.yaml", "shapes_conditional.yaml", "cifar10_ddpm.yaml", "finetune_ddpm_cifar10.yaml"}, (
        f"add a build test for {config}"
    )



@pytest.mark.parametrize("config", ["quickstart.yaml", "shapes_conditional.yaml", "cifar10_ddpm.yaml", "finetune_ddpm_cifar10.yaml"])
def test_every_training_config_probes_while_it_trains(config):
    text = (REPO / "configs" / config).read_text()
    assert "diffprobe.callbacks.ProbeMonitor" in text
    assert ("diffprobe.callbacks.OnlineProbes" in text) != ("compile: true" in text), "online heads need an eager UNet"
