"""Loading a file never runs code (issue 9): what diffprobe saves is plain data, and every probe.py
command that reads a checkpoint or a probe set refuses a crafted one before anything is unpickled
into code, with a message naming the file. Damaged files get a clear error too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from diffprobe.commands.probe import probe_main
from diffprobe.data.probe_set import PROBE_SET_FILE, ProbeSet, fixed_examples
from diffprobe.io.loading import LoadError
from diffprobe.io.runs import checkpoint_step
from diffprobe.training import checkpoints
from diffprobe.training.callbacks import AttentionRecorder, OnlineProbes, PredictionEvolution, ProbeMonitor, SampleGrid
from helpers import make_module, make_trainer, shapes_data

CAPTION = "a large red solid circle at the top left on a navy background"


class OpensAFile:
    """Unpickled by a plain ``torch.load``, this creates ``path``: proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class RunsAShellCommand:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One tiny run with every callback that keeps state, each firing at least once."""
    root = tmp_path_factory.mktemp("run")
    callbacks = [
        ProbeMonitor(every_n_steps=2, num_images=10, timesteps=[0, 50], layers=["mid_block"], method="ridge", heatmaps=False),
        OnlineProbes(layers=["mid_block"], num_buckets=2, log_every_n_steps=1),
        SampleGrid(every_n_steps=2, num_images=1, num_inference_steps=2),
        AttentionRecorder(every_n_steps=2, num_images=1, timesteps=[50]),
        PredictionEvolution(every_n_steps=2, num_images=1, timesteps=[50], trajectory_steps=2, trajectory_every=1),
    ]
    make_trainer(root, max_steps=2, every_n_steps=2, callbacks=callbacks).fit(make_module(), datamodule=shapes_data())
    return root / "runs/test/version_0"


@pytest.fixture(scope="module")
def crafted(run, tmp_path_factory) -> dict[str, Path]:
    """Real diffprobe files with one malicious object each, and the marker files they would create."""
    root = tmp_path_factory.mktemp("crafted")
    real = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    files: dict[str, Path] = {"marker": root / "pwned", "control_marker": root / "control"}

    evil = {**real, "hyper_parameters": {**real["hyper_parameters"], "note": OpensAFile(files["marker"])}}
    torch.save(evil, files.setdefault("ckpt", root / "evil.ckpt"))
    callbacks = {name: {**state, "history": [RunsAShellCommand(files["marker"])]} for name, state in real["callbacks"].items()}
    evil_run = root / "evil_run"
    (evil_run / "checkpoints").mkdir(parents=True)
    torch.save({**real, "callbacks": callbacks}, evil_run / "checkpoints/step=000002.ckpt")
    files["run"] = evil_run

    probe_set = torch.load(run / PROBE_SET_FILE, weights_only=True)
    torch.save({**probe_set, "captions": [RunsAShellCommand(files["marker"])]}, files.setdefault("probe_set", root / "evil_probe_set.pt"))
    # A real run whose probe set alone was replaced: probe.py linear reads it by default.
    good_checkpoint_run = root / "run_with_evil_probe_set"
    shutil.copytree(run / "checkpoints", good_checkpoint_run / "checkpoints")
    shutil.copy(files["probe_set"], good_checkpoint_run / PROBE_SET_FILE)
    files["run_with_evil_probe_set"] = good_checkpoint_run
    return files


def _refused(error: BaseException, path: Path) -> None:
    message = str(error)
    assert "refusing to load" in message and str(path) in message, message
    assert "could run code" in message and "GLOBAL" in message, message  # torch's reason names the object


# ---- what diffprobe writes is plain data ----------------------------------------------------------


def test_a_real_runs_checkpoints_and_probe_set_are_plain_data(run):
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} == {"last.ckpt", "step=000000.ckpt", "step=000002.ckpt"}
    for path in ckpts:
        saved = torch.load(path, weights_only=True)  # raises if anything is not plain data
        states = " ".join(saved["callbacks"])
        for name in ("ProbeMonitor", "AttentionRecorder", "PredictionEvolution", "ModelCheckpoint"):
            assert name in states, states
        assert any(k.startswith("probe_heads.") for k in saved["state_dict"]), "OnlineProbes' heads are the module's"
        step = 0 if path.name == "step=000000.ckpt" else 2  # the init weights, before the first step
        assert saved["lr_schedulers"] and saved["optimizer_states"] and saved["ema"]["optimization_step"] == step and any(k.startswith("ema.copy.") for k in saved["state_dict"])
    history = next(state for key, state in saved["callbacks"].items() if key.startswith("ProbeMonitor"))["history"]
    assert history and any(isinstance(v, torch.Tensor) for v in history[0].values()), "the probe history holds tensors"
    module = checkpoints.load_module(run / "checkpoints/last.ckpt")
    assert module.global_step_at_save == 2 and module.ema.optimization_step == 2
    probe_set = ProbeSet.load(run / PROBE_SET_FILE)
    assert len(probe_set) == 10 and probe_set.timesteps.tolist() == [0, 50]
    assert all(isinstance(v, tuple) for v in probe_set.concepts.values())


def test_probe_set_save_writes_tensors_and_plain_metadata_and_load_checks_the_marker(run, tmp_path):
    original = ProbeSet.load(run / PROBE_SET_FILE)
    path = original.save(tmp_path / "copy.pt")
    stored = torch.load(path, weights_only=True)
    assert stored["format"] == "diffprobe.ProbeSet/1" and isinstance(stored["captions"], list)
    again = ProbeSet.load(path)
    assert again.concepts == original.concepts and again.captions == original.captions and torch.equal(again.images, original.images)
    with pytest.raises(ValueError, match=r"last\.ckpt is not a diffprobe probe set \(no 'diffprobe.ProbeSet/1' format marker"):
        ProbeSet.load(run / "checkpoints/last.ckpt")
    torch.save({**stored, "images": "not a tensor"}, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match=r"damaged.pt is a damaged diffprobe probe set \(missing or malformed: images\)"):
        ProbeSet.load(tmp_path / "damaged.pt")


# ---- crafted files are refused ---------------------------------------------------------------------


def test_the_crafted_files_would_run_code_under_a_plain_torch_load(crafted, tmp_path):
    """Control: without weights_only the payload does run (so the refusals below mean something)."""
    marker = crafted["control_marker"]
    torch.save({"x": OpensAFile(marker)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()


def test_load_module_probe_set_and_fixed_examples_refuse_crafted_files(crafted, run):
    with pytest.raises(LoadError) as error:
        checkpoints.load_module(crafted["ckpt"])
    _refused(error.value, crafted["ckpt"])
    with pytest.raises(ValueError) as error:
        ProbeSet.load(crafted["probe_set"])
    _refused(error.value, crafted["probe_set"])
    with pytest.raises(ValueError, match="refusing to load"):
        fixed_examples(crafted["run_with_evil_probe_set"], heldout=None, count=2)
    assert checkpoint_step(crafted["ckpt"]) == -1  # the step is not worth running code for
    assert not crafted["marker"].exists()


CHECKPOINT_COMMANDS = {
    "export": lambda ckpt, out: ["export", "--ckpt", ckpt, "--out", out],
    "sample": lambda ckpt, out: ["sample", "--ckpt", ckpt, "--out", f"{out}.png", "--num", "1", "--steps", "1"],
    "linear": lambda ckpt, out: ["linear", "--ckpt", ckpt, "--out", out, "--device", "cpu"],
    "fidelity": lambda ckpt, out: ["fidelity", "--ckpt", ckpt, "--out", out, "--num_captions", "1", "--steps", "2", "--reader_steps", "1"],
    "rise": lambda ckpt, out: ["rise", "--ckpt", ckpt, "--out", out, "--masks", "2", "--steps", "2", "--step", "1"],
    "cam": lambda ckpt, out: ["cam", "--ckpt", ckpt, "--out", out, "--steps", "2", "--step", "1"],
    "lime": lambda ckpt, out: ["lime", "--ckpt", ckpt, "--out", out, "--samples", "2", "--steps", "2", "--step", "1"],
    "auc": lambda ckpt, out: ["auc", "--ckpt", ckpt, "--out", out, "--inputs", "1", "--steps", "2", "--step", "1"],
    "schedules": lambda ckpt, out: ["schedules", "--ckpt", ckpt, "--out", out, "--seeds", "[0]", "--schedule.steps", "2"],
    "relevance": lambda ckpt, out: ["relevance", "--ckpt", ckpt, "--out", out, "--prompt", CAPTION, "--schedule.steps", "2"],
    "correlation": lambda ckpt, out: ["correlation", "--ckpt", ckpt, "--out", out, "--triple", "[[a large red solid circle, at, the top left]]", "--schedule.steps", "2"],
    "groundtruth": lambda ckpt, out: ["groundtruth", "--ckpt", ckpt, "--out", out, "--inputs", "1", "--steps", "2"],
    "discover": lambda ckpt, out: ["discover", "--ckpt", ckpt, "--out", out, "--layers", "[mid_block]", "--timesteps", "[10]", "--sae_steps", "2", "--num_images", "10"],
    "intervene": lambda ckpt, out: ["intervene", "--ckpt", ckpt, "--out", out, "--num_captions", "1", "--steps", "2", "--reader_steps", "1"],
}


def test_every_command_that_reads_a_checkpoint_is_covered():
    from diffprobe.commands.probe import COMMANDS

    assert set(COMMANDS) == set(CHECKPOINT_COMMANDS) | TABLE_COMMANDS | STUDY_COMMANDS, "a new probe.py command: add it to CHECKPOINT_COMMANDS"


# Commands that read only the tables other commands wrote, never a checkpoint's weights.
TABLE_COMMANDS = {"story"}
# Commands that take only whole study runs (config.yaml, a step-0 checkpoint): each refuses a crafted
# checkpoint inside such a run in its own test (tests/commands/test_hidden_command.py).
STUDY_COMMANDS = {"hidden"}


def test_story_reads_no_checkpoint_of_a_crafted_run(crafted, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as error:
        probe_main(["story", "--ckpt", str(crafted["run"]), "--out", str(out)])
    assert "holds no measurements yet" in str(error.value.code)
    assert not crafted["marker"].exists() and not out.exists()


@pytest.mark.parametrize("command", sorted(CHECKPOINT_COMMANDS))
def test_every_command_refuses_a_crafted_checkpoint(command, crafted, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as error:
        probe_main(CHECKPOINT_COMMANDS[command](str(crafted["ckpt"]), str(out)))
    _refused(error.value, crafted["ckpt"])
    assert not crafted["marker"].exists(), "the crafted checkpoint ran code"
    assert not out.exists() and not Path(f"{out}.png").exists()


@pytest.mark.parametrize("command", ["linear", "rise"])
def test_a_run_directory_with_a_crafted_checkpoint_is_refused(command, crafted, tmp_path):
    with pytest.raises(SystemExit) as error:
        probe_main(CHECKPOINT_COMMANDS[command](str(crafted["run"]), str(tmp_path / "out")))
    _refused(error.value, crafted["run"] / "checkpoints/step=000002.ckpt")
    assert not crafted["marker"].exists()


@pytest.mark.parametrize("where", ["--probe_set", "the run's own"])
def test_linear_refuses_a_crafted_probe_set(where, crafted, run, tmp_path):
    if where == "--probe_set":
        args = ["linear", "--ckpt", str(run / "checkpoints/last.ckpt"), "--probe_set", str(crafted["probe_set"])]
        named = crafted["probe_set"]
    else:
        args = ["linear", "--ckpt", str(crafted["run_with_evil_probe_set"])]
        named = crafted["run_with_evil_probe_set"] / PROBE_SET_FILE
    with pytest.raises(SystemExit) as error:
        probe_main([*args, "--out", str(tmp_path / "probes"), "--device", "cpu"])
    _refused(error.value, named)
    assert not crafted["marker"].exists()
    assert not (tmp_path / "probes/probes.csv").exists()


# ---- damaged files ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged(run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("damaged")
    data = (run / "checkpoints/last.ckpt").read_bytes()
    files = {"empty": root / "empty.ckpt", "truncated": root / "truncated.ckpt", "random": root / "random.ckpt"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["random"].write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    return files


EXPECTED = {
    "empty": r"empty.ckpt is not a diffprobe checkpoint \(the file is empty\)",
    "truncated": r"truncated.ckpt is not a diffprobe checkpoint \(truncated or not a torch file: RuntimeError: .*zip archive",
    "random": r"random.ckpt is not a diffprobe checkpoint \(truncated or not a torch file: ",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_damaged_files_get_a_clear_error_naming_them(kind, damaged):
    path = damaged[kind]
    with pytest.raises(ValueError, match=EXPECTED[kind]) as error:
        checkpoints.load_module(path)
    assert str(path) in str(error.value) and "refusing" not in str(error.value)
    with pytest.raises(SystemExit, match=EXPECTED[kind]):  # a command exits with the same message
        probe_main(["export", "--ckpt", str(path), "--out", str(path.parent / f"export-{kind}")])
    with pytest.raises(ValueError, match=EXPECTED[kind].replace("checkpoint", "probe set")):
        ProbeSet.load(path)


def test_a_missing_file_or_a_folder_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint .*nothing.ckpt does not exist"):
        checkpoints.load_module(tmp_path / "nothing.ckpt")
    with pytest.raises(FileNotFoundError, match="probe set .* is not a file"):
        ProbeSet.load(tmp_path)
