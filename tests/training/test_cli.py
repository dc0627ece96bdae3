"""train.py / probe.py as a user runs them: the quickstart config, overrides, runs never overwritten."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import DDPMPipeline

from diffprobe.commands.probe import probe_main
from diffprobe.commands.train import train_main
from helpers import REPO, TINY_UNET, read_events

FAST = [
    "--trainer.max_steps", "4",
    "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false",
    "--data.init_args.train_size", "32",
    "--data.init_args.heldout_size", "16",
    "--data.init_args.batch_size", "8",
    "--model.unet", json.dumps(TINY_UNET),
    "--model.warmup_steps", "1",
]


def quickstart(*extra, config=REPO / "configs/quickstart.yaml"):
    return ["fit", "--config", str(config), *FAST, *extra]


# The quick start's callbacks, each observing a little (a few images, timesteps and layers, a few sampler
# steps, no heatmaps). The quick start exactly as the README gives it (600 steps, every callback at its
# settings) runs in CI (.ci/run), and so does the installed wheel's bundled quickstart config (every
# callback, 2 steps): here the config's callbacks run light, so that its run is quick to share.
LIGHTER = {
    "SampleGrid": {"num_images": 2, "num_inference_steps": 3},
    "ProbeMonitor": {"num_images": 12, "timesteps": [10, 50], "layers": ["mid_block"], "heatmaps": False},
    "AttentionRecorder": {"num_images": 1, "timesteps": [50], "layers": ["mid_block.attentions.0"]},
    "PredictionEvolution": {"num_images": 2, "timesteps": [50], "trajectory_steps": 3, "trajectory_every": 1},
}


def light_quickstart(*extra):
    config = yaml.safe_load((REPO / "configs/quickstart.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        callback.setdefault("init_args", {}).update(LIGHTER.get(callback["class_path"].rsplit(".", 1)[-1], {}))
    path = Path("quickstart_light.yaml")  # in the test's working folder
    path.write_text(yaml.safe_dump(config))
    return quickstart(*extra, config=path.resolve())


def _no_rich(args):
    # The quickstart config adds a StepProgressBar; with the bar disabled the trainer refuses it.
    return [a if a != "false" or args[i - 1] != "--trainer.enable_progress_bar" else "true" for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """(working folder, LightningCLI) of one 4-step quickstart run (light callbacks) at
    <folder>/runs/quickstart/version_0, shared by the tests below; read-only."""
    folder = tmp_path_factory.mktemp("quickstart")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        cli = train_main(_no_rich(light_quickstart()))
    return folder, cli


def test_quickstart_config_makes_a_complete_run(quickstart_run, monkeypatch):
    tmp_path, cli = quickstart_run
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs/quickstart/version_0"
    assert Path(cli.trainer.log_dir) == Path("runs/quickstart/version_0")
    assert (run / "config.yaml").exists() and (run / "checkpoints/last.ckpt").exists()
    pipeline = DDPMPipeline.from_pretrained(run / "export")
    assert pipeline(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 3)
    tags = read_events(run).Tags()
    assert "train/loss" in tags["scalars"] and "samples/ema" in tags["images"]
    # a second run gets a new version, never the old directory
    train_main(_no_rich(light_quickstart("--trainer.max_steps", "1")))
    assert (tmp_path / "runs/quickstart/version_1/config.yaml").exists()


def test_resume_continues_in_the_same_run_directory(quickstart_run, tmp_path, monkeypatch):
    shutil.copytree(quickstart_run[0] / "runs/quickstart/version_0", tmp_path / "runs/quickstart/version_0")  # a copy to resume
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs/quickstart/version_0"
    first_config = (run / "config.yaml").read_text()
    cli = train_main(_no_rich(light_quickstart("--trainer.max_steps", "6", "--ckpt_path", str(run / "checkpoints/last.ckpt"))))
    assert cli.trainer.global_step == 6
    assert Path(cli.trainer.log_dir).resolve() == run.resolve()
    assert (run / "config.yaml").read_text() == first_config
    assert (run / "config-resume-1.yaml").exists()
    assert not (tmp_path / "runs/quickstart/version_1").exists()
    # resuming again from the newest checkpoint continues again, without clobbering anything
    cli = train_main(_no_rich(light_quickstart("--trainer.max_steps", "8", "--ckpt_path", str(run / "checkpoints/last.ckpt"))))
    assert cli.trainer.global_step == 8 and (run / "config-resume-2.yaml").exists()


def test_ckpt_path_last_starts_a_run_then_continues_the_newest_one(quickstart_run, tmp_path, monkeypatch, capsys):
    # One command for a job's first start and every requeue.
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs/quickstart"
    cli = train_main(_no_rich(light_quickstart("--trainer.max_steps", "2", "--ckpt_path", "last")))
    assert cli.trainer.global_step == 2 and Path(cli.trainer.log_dir) == Path("runs/quickstart/version_0")
    assert "no run in runs/quickstart has a checkpoint yet; starting a new run" in capsys.readouterr().err
    cli = train_main(_no_rich(light_quickstart("--trainer.max_steps", "4", "--ckpt_path", "last")))
    assert cli.trainer.global_step == 4 and Path(cli.trainer.log_dir).resolve() == (runs / "version_0").resolve()
    assert "runs/quickstart/version_0/checkpoints/last.ckpt, the newest checkpoint" in capsys.readouterr().err
    assert not (runs / "version_1").exists(), "the run continued in place"
    # Two runs: the newest version continues; the older one is left as it is.
    shutil.copytree(quickstart_run[0] / "runs/quickstart/version_0", runs / "version_1")
    before = {p.name: p.stat().st_mtime_ns for p in (runs / "version_0/checkpoints").iterdir()}
    cli = train_main(_no_rich(light_quickstart("--trainer.max_steps", "6", "--ckpt_path", "last")))
    assert cli.trainer.global_step == 6 and Path(cli.trainer.log_dir).resolve() == (runs / "version_1").resolve()
    assert {p.name: p.stat().st_mtime_ns for p in (runs / "version_0/checkpoints").iterdir()} == before


def test_ckpt_path_last_needs_a_logger_to_find_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="--ckpt_path last finds the run by the logger's save_dir and name"):
        train_main(_no_rich(quickstart("--trainer.logger", "false", "--ckpt_path", "last")))
    assert not any(tmp_path.iterdir())


def test_without_a_logger_the_observers_refuse_before_writing_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="SampleGrid writes to TensorBoard, and this Trainer has no TensorBoardLogger"):
        train_main(_no_rich(quickstart("--trainer.logger", "false", "--trainer.max_steps", "2")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_existing_run_directory_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs/quickstart/mine"
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("precious")
    with pytest.raises(SystemExit, match="never writes into an existing run"):
        train_main(_no_rich(quickstart("--trainer.logger.init_args.version", "mine")))
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_unknown_config_key_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        train_main(_no_rich(quickstart("--model.learning_speed", "0.1")))
    assert "learning_speed" in capsys.readouterr().err
    config = tmp_path / "typo.yaml"
    config.write_text((REPO / "configs/quickstart.yaml").read_text().replace("  warmup_steps:", "  warmup_stpes:"))
    with pytest.raises(SystemExit):
        train_main(["fit", "--config", str(config), *FAST])
    assert "warmup_stpes" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_image_size_override_reaches_data_and_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = train_main(_no_rich(quickstart("--data.init_args.image_size", "32"))[1:], run=False)
    assert cli.model.unet.config.sample_size == 32 and cli.datamodule.image_size == 32


def test_probe_export_and_sample_commands(quickstart_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = quickstart_run[0] / "runs/quickstart/version_0/checkpoints/last.ckpt"
    out = probe_main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exported")])
    assert DDPMPipeline.from_pretrained(out).unet.config.sample_size == 16
    with pytest.raises(SystemExit, match="exists and is not empty"):
        probe_main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exported")])
    png = probe_main(["sample", "--ckpt", str(ckpt), "--out", str(tmp_path / "grid.png"), "--num", "4", "--steps", "2"])
    assert png.stat().st_size > 0
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4
