"""``probe.py hidden`` end to end on a tiny run with a held-out combination: what it writes, that
a rerun measures nothing again, TensorBoard, and the input it refuses before measuring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from diffprobe.commands.probe import probe_main
from diffprobe.commands.train import train_main
from helpers import READER, TINY_CONDITIONAL_UNET, read_events, refusal

SMALL = [
    "--num_images", "4", "--steps", "4", "--lock_in_images", "2", "--switch_times", "[10, 50]", "--layers", "[mid_block]",
    "--timesteps", "[10, 50]", "--probe_images", "60", "--heldout_probe_images", "12", "--steer_layer", "mid_block", "--steer_t", "50", "--batch_size", "4", *READER,
]  # fmt: skip


@pytest.fixture(scope="module")
def heldout_run(tmp_path_factory) -> Path:
    """A tiny conditional run through train.py, (small, blue) held out, colour contrast 0.5, 2 steps
    with a checkpoint each."""
    folder = tmp_path_factory.mktemp("hidden")
    config = {
        "seed_everything": 0,
        "model": {"preset": "tiny", "conditional": True, "unet": dict(TINY_CONDITIONAL_UNET), "num_train_timesteps": 100, "warmup_steps": 1, "ema_decay": 0.9},
        "data": {
            "class_path": "diffprobe.training.ConceptShapesDataModule",
            "init_args": {"image_size": 16, "train_size": 40, "heldout_size": 16, "batch_size": 8, "heldout_combinations": [["small", "blue"]], "colour_contrast": 0.5},
        },
        "trainer": {
            "accelerator": "cpu", "max_steps": 2, "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs", "name": "sweep/contrast_0.5"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"filename": "step={step:06d}", "auto_insert_metric_name": False, "every_n_train_steps": 1, "save_top_k": -1, "save_last": True}}],
        },  # fmt: skip
    }
    (folder / "hidden.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        train_main(["fit", "--config", "hidden.yaml"])
    return folder / "runs/sweep/contrast_0.5/version_0"


def test_hidden_writes_results_figures_and_tensorboard_and_a_rerun_measures_nothing(heldout_run, tmp_path, capsys):
    out = tmp_path / "study"
    # A folder of runs is a sweep: every run under it is studied.
    probe_main(["hidden", "--ckpt", str(heldout_run.parents[1]), "--out", str(out), *SMALL])
    first = capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert run["concept_signal"] == {"colour_contrast": 0.5, "size_difference": 1.0}
    assert run["heldout_combination"] == {"object_colour": "blue", "size": "small"}
    assert [s["step"] for s in run["steps"]] == [0, 1, 2]
    variants = ("plain", "over_prompting", "embedding_intervention", "steering")
    for step in run["steps"]:
        assert all(0.0 <= step[v] <= 1.0 for v in variants)
        assert set(step["lock_in"]) == {"object_colour", "size"}
        assert set(step["represented"]) == {"object_colour", "size", "combination"}
    assert set(run["reaches_80"]) == set(variants)
    assert set(run["learning_speed"]["plain"]) == {"combination", "object_colour", "size"}
    assert set(run["hidden_window"]) == {"opens", "closes", "first_intervention", "hidden"}
    for name in ("hidden_capability.png", "concept_space.png", "learning_speed.png", "represented_and_decided.png", "examples_contrast_0.5-version_0.png"):
        assert (out / name).stat().st_size > 1000
    assert first.err.count("step=0000") == 3
    scalars = read_events(heldout_run).Tags()["scalars"]
    assert {f"hidden/{v}" for v in variants} <= set(scalars)
    assert [e.step for e in read_events(heldout_run).Scalars("hidden/plain")] == [0, 1, 2]

    probe_main(["hidden", "--ckpt", str(heldout_run), "--out", str(out), *SMALL])
    again = capsys.readouterr()
    assert "step=0000" not in again.err  # every checkpoint is in runs/<run>.json already
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]

    message = refusal(["hidden", "--ckpt", str(heldout_run), "--out", str(out), *SMALL, "--num_images", "5"], capsys)
    assert "measured with other settings, weights or run design" in message and "give a new --out" in message
    assert "give a new --out" in refusal(["hidden", "--ckpt", str(heldout_run), "--out", str(out), *SMALL, "--weights", "raw"], capsys)


def test_hidden_refuses_bad_input_before_measuring(heldout_run, tmp_path, capsys):
    out = str(tmp_path / "never")
    plain_run = Path(shutil.copytree(heldout_run, tmp_path / "runs/plain/version_0"))
    config = yaml.safe_load((plain_run / "config.yaml").read_text())
    del config["data"]["init_args"]["heldout_combinations"]
    (plain_run / "config.yaml").write_text(yaml.safe_dump(config))
    cases = [
        (["--ckpt", str(plain_run)], "held no combination out of training"),
        (["--ckpt", str(heldout_run / "checkpoints/step=000001.ckpt")], "give a run directory"),
        (["--ckpt", str(heldout_run), "--steer_t", "300"], "steer_t 300 must be one of the probe timesteps"),
        (["--ckpt", str(heldout_run), "--switch_times", "[50, 10]"], "must be ascending and distinct"),
        (["--ckpt", str(heldout_run), "--layers", "[mid_block, no_such_block]", "--steer_layer", "mid_block"], "--layers"),
        (["--ckpt", str(heldout_run), "--steps", "500"], "below the model's T = 100"),
    ]
    for flags, expected in cases:
        args = ["hidden", *SMALL, "--out", out, *flags]
        assert expected in refusal(args, capsys), flags
    assert not (tmp_path / "never" / "results.json").exists()


class RunsAShellCommand:
    """Unpickling it would run a shell command that creates ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch '{self.path}'",))


def test_hidden_refuses_a_crafted_checkpoint_in_a_study_run(heldout_run, tmp_path, capsys):
    import torch

    run = Path(shutil.copytree(heldout_run, tmp_path / "runs/evil/version_0"))
    marker = tmp_path / "pwned"
    real = torch.load(run / "checkpoints/step=000000.ckpt", weights_only=True)
    torch.save({**real, "hyper_parameters": {**real["hyper_parameters"], "note": RunsAShellCommand(marker)}}, run / "checkpoints/step=000000.ckpt")
    message = refusal(["hidden", "--ckpt", str(run), "--out", str(tmp_path / "out"), *SMALL], capsys)
    assert "refusing to load" in message and "step=000000.ckpt" in message
    assert not marker.exists()
