"""Runs that survive the real world: kill -9 and resume, SIGTERM / SIGINT mid-evaluation, a checkpoint
write killed halfway, resume rules, and a bad --ckpt_path refused before anything is built.

The fault tests run train.py in a subprocess (tests/faults.py) that is killed or signalled, as a user
or a scheduler would; the resumption after it runs train.py's command in this process (train_main,
as the resume-rule tests do), which saves a Python start with torch and Lightning per resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing import plugin_event_accumulator

from diffprobe.commands.train import train_main
from diffprobe.io.loading import safe_load
from diffprobe.io.runs import find_checkpoints
from diffprobe.report.writer import LazyWriter
from diffprobe.training.callbacks import ExportDiffusers, OnlineProbes, SampleGrid
from diffprobe.training.run_safety import RunInterrupted
from faults import TESTS, TINY_CONFIG_RUN, tiny_run_config, train
from helpers import TINY_UNET, make_module, make_trainer, read_events, shapes_data

LAST = "runs/tiny/version_0/checkpoints/last.ckpt"


def _tag_steps(run: Path) -> dict[str, list[int]]:
    """Steps per tag (scalars, images, figures) as TensorBoard's own backend reads them (the plugin accumulator, which
    purges on a restart only after a run's first SessionLog.START, unlike the legacy reader)."""
    events = plugin_event_accumulator.EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: [e.step for e in events.Tensors(tag)] for tag in events.Tags()["tensors"]}


def _not_increasing(steps: dict[str, list[int]]) -> dict[str, list[int]]:
    return {tag: s for tag, s in steps.items() if any(b <= a for a, b in zip(s, s[1:]))}


def _state(checkpoint: dict, prefix: str) -> dict:
    return next(v for k, v in checkpoint["callbacks"].items() if k.startswith(prefix))


def _assert_trained_the_same(final: dict, reference: dict) -> None:
    """Raw and EMA weights, online-probe heads and the optimizer's moments equal, bit for bit."""
    assert final["state_dict"].keys() == reference["state_dict"].keys()
    different = [k for k, v in final["state_dict"].items() if not torch.equal(v, reference["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    moments, reference_moments = final["optimizer_states"][0]["state"], reference["optimizer_states"][0]["state"]
    assert moments.keys() == reference_moments.keys()
    for key, state in moments.items():
        assert all(torch.equal(state[name], reference_moments[key][name]) for name in ("exp_avg", "exp_avg_sq")), f"optimizer state {key}"


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_config_run, tmp_path, monkeypatch, capsys):
    # Reference: the same config, uninterrupted, in this process (conftest's tiny_config_run).
    # kill -9 at step 7: the newest checkpoint is step 6, where ProbeMonitor (every 4) is not due
    # and SampleGrid (every 2) is: the resume must add no evaluation and repeat no grid.
    work = tmp_path / "interrupted"
    work.mkdir()
    tiny_run_config(work / "tiny.yaml", **TINY_CONFIG_RUN)
    killed = train(work, "--config", "tiny.yaml", env={"DIFFPROBE_TEST_KILL_AT": "7"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert safe_load(work / LAST)["global_step"] == 6
    monkeypatch.chdir(work)
    capsys.readouterr()
    train_main(["fit", "--config", "tiny.yaml", "--ckpt_path", LAST])  # the resume: raises if it fails
    assert "continues in place" in capsys.readouterr().err

    run, reference_run = work / "runs/tiny/version_0", tiny_config_run
    assert not (work / "runs/tiny/version_1").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    assert not list(run.rglob("*-v1*")), "a resume must keep writing last.ckpt, not last-v1.ckpt"
    final, reference = safe_load(run / "checkpoints/last.ckpt"), safe_load(reference_run / "checkpoints/last.ckpt")
    assert final["global_step"] == reference["global_step"] == 8
    assert final["ema"]["optimization_step"] == reference["ema"]["optimization_step"] == 8
    assert final["optimizer_states"][0]["state"][0]["step"] == reference["optimizer_states"][0]["state"][0]["step"] == 8
    # The online probe heads train in the same optimizer (their own parameter group): their moments
    # continued through the resume too.
    head, head_reference = (c["optimizer_states"][0]["param_groups"][1]["params"][0] for c in (final, reference))
    assert final["optimizer_states"][0]["state"][head]["step"] == reference["optimizer_states"][0]["state"][head_reference]["step"] == 8
    assert any(k.startswith("probe_heads.") for k in final["state_dict"])
    history = [h["step"] for h in _state(final, "ProbeMonitor")["history"]]
    assert history == [h["step"] for h in _state(reference, "ProbeMonitor")["history"]] == [0, 4, 8]

    steps, reference_steps = _tag_steps(run), _tag_steps(reference_run)
    assert not _not_increasing(steps)
    assert set(steps) == set(reference_steps)
    for tag in ("train/loss", "probe/shape/mid_block/t0050/acc", "denoise/mse/t0010"):
        assert steps[tag] == reference_steps[tag], tag
    assert steps["samples/ema"] == [0, 2, 4, 6, 8] and steps["pred/x0_hat"] == [0, 4, 8]

    # Bit for bit: the checkpoint carried the random states and the data position (step 6 is
    # batch 1 of epoch 1: 40 images, batches of 8).
    _assert_trained_the_same(final, reference)
    accuracy = _state(final, "ProbeMonitor")["history"][-1]["accuracy"]
    assert torch.equal(accuracy, _state(reference, "ProbeMonitor")["history"][-1]["accuracy"])


def test_sigterm_then_slurm_requeue_stop_within_the_step_and_the_run_ends_bit_for_bit(tiny_config_run, tmp_path, monkeypatch):
    # One run stopped twice, as a preempted and then requeued SLURM job would be, resumed each time
    # with the job script's one command (train.py fit --config tiny.yaml --ckpt_path last), and in
    # the end equal to the uninterrupted reference bit for bit. A DataLoader worker throughout, and
    # other ProbeMonitor and checkpoint settings than the reference's: observers never draw from the
    # training's random streams. 15 t x 15 UNet batches per evaluation; checkpoints every 3 steps.
    tiny_run_config(tmp_path / "tiny.yaml", probe_images=60, probe_batch=4, checkpoint_every=3)
    command = ["fit", "--config", "tiny.yaml", "--data.init_args.num_workers", "1", "--ckpt_path", "last"]
    run = tmp_path / "runs/tiny/version_0"

    # 1. SIGTERM from inside the step-4 evaluation (a subprocess, as a scheduler sends it).
    report = tmp_path / "report.json"
    stopped = train(tmp_path, *command[1:], env={"DIFFPROBE_TEST_SIGNAL_AT": "4", "DIFFPROBE_TEST_REPORT": str(report)})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "stopped by SIGTERM at step 4" in stopped.stderr
    # The evaluation gave up at its next UNet batch instead of running its remaining ~220 calls.
    assert json.loads(report.read_text()) == {"calls_after_signal": 0, "step": 4}
    checkpoint = safe_load(tmp_path / LAST)
    assert checkpoint["global_step"] == 4
    assert [h["step"] for h in _state(checkpoint, "ProbeMonitor")["history"]] == [0], "the interrupted evaluation is discarded"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step=000000.ckpt", "step=000003.ckpt"]
    assert not (run / "export").exists(), "an interrupted run is not exported"
    # The stop step's own loss (batch 4, logged at step 3) reached TensorBoard before the exit.
    assert [e.step for e in read_events(run).Scalars("train/loss")] == [0, 1, 2, 3]

    # 2. The resumed job runs under SLURM (its variables; Lightning's auto-requeue is on by default)
    # with a stand-in scontrol, and gets SLURM's requeue signal at step 6.
    stand_ins, calls = tmp_path / "bin", tmp_path / "scontrol.log"
    stand_ins.mkdir()
    (stand_ins / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (stand_ins / "scontrol").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "diffprobe", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "DIFFPROBE_TEST_TERM_AT": "6", "DIFFPROBE_TEST_TERM_SIGNAL": "SIGUSR1"}  # fmt: skip
    with monkeypatch.context() as job:
        for name, value in slurm.items():
            job.setenv(name, value)
        job.setenv("PATH", f"{stand_ins}{os.pathsep}{os.environ['PATH']}")
        with pytest.raises(RunInterrupted) as requeued:
            train_main(command)
    assert requeued.value.code == 128 + signal.SIGUSR1
    assert calls.read_text().split() == ["requeue", "4242"], "the job requeued itself once"
    assert safe_load(tmp_path / LAST)["global_step"] == 6, "last.ckpt written through the SIGTERM path"
    assert not list(tmp_path.rglob("hpc_ckpt*")), "no Lightning hpc checkpoint beside the run's last.ckpt"

    # 3. The requeued job: the same command, to the end.
    train_main(command)
    assert not (tmp_path / "runs/tiny/version_1").exists(), "every start continued the one run"
    final = safe_load(run / "checkpoints/last.ckpt")
    assert final["global_step"] == 8 and final["optimizer_states"][0]["state"][0]["step"] == 8, "no step lost"
    _assert_trained_the_same(final, safe_load(tiny_config_run / "checkpoints/last.ckpt"))
    assert [h["step"] for h in _state(final, "ProbeMonitor")["history"]] == [0, 4, 8], "the discarded evaluation runs on resume"
    steps = _tag_steps(run)
    assert not _not_increasing(steps) and steps["train/loss"] == list(range(8))


KILL_DURING_SECOND_WRITE = """
import builtins, os, signal, sys
sys.path.insert(0, {tests!r})
real_open, opened = builtins.open, []

class HalfWriter:  # dies halfway through the first write, or as a copy by file descriptor starts
    def __init__(self, handle): self.handle = handle
    def write(self, data):
        self.handle.write(bytes(data)[: len(data) // 2]); self.handle.flush(); os.kill(os.getpid(), signal.SIGKILL)
    def fileno(self):
        self.handle.flush(); os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, name): return getattr(self.handle, name)
    def __enter__(self): return self
    def __exit__(self, *exc): return self.handle.__exit__(*exc)

def open_(file, mode="r", *args, **kwargs):
    handle = real_open(file, mode, *args, **kwargs)
    if "w" in mode and "last.ckpt" in os.path.basename(str(file)):
        opened.append(file)
        if len(opened) == 2:  # the second write of last.ckpt dies halfway through
            return HalfWriter(handle)
    return handle

builtins.open = open_
from diffprobe.commands.train import train_main
train_main(["fit", "--config", "tiny.yaml"])
"""


def test_a_checkpoint_write_killed_halfway_leaves_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    tiny_run_config(tmp_path / "tiny.yaml")
    # Lightning's own writer stages the file in TMPDIR and moves it: across file systems (tmpfs
    # here) the move is a copy into last.ckpt itself, which is what a kill truncated.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), "TMPDIR": "/dev/shm" if Path("/dev/shm").is_dir() else str(tmp_path)}
    script = KILL_DURING_SECOND_WRITE.format(tests=str(TESTS))
    killed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / LAST
    assert safe_load(last)["global_step"] == 2, "last.ckpt is the complete previous checkpoint"
    # The killed write's partial file is hidden: no checkpoint listing picks it up.
    assert [p.name for p in last.parent.glob(".*")] == [".last.ckpt.partial"]
    assert all(p.suffix == ".ckpt" and not p.name.startswith(".") for p in find_checkpoints(last.parent.parent))
    # step=000004.ckpt was complete before last.ckpt's write died: the resume says so and branches.
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    train_main(["fit", "--config", "tiny.yaml", "--ckpt_path", LAST, "--trainer.max_steps", "4"])  # raises if it fails
    stderr = capsys.readouterr().err
    assert "step=000004.ckpt" in stderr and "not the newest checkpoint" in stderr
    assert safe_load(tmp_path / "runs/tiny/version_1/checkpoints/last.ckpt")["global_step"] == 4


def test_sigint_stops_after_the_step_with_a_checkpoint(tmp_path):
    class CtrlC(SampleGrid):  # presses Ctrl+C at step 3, between two training steps
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    trainer = make_trainer(tmp_path, max_steps=10, every_n_steps=100, callbacks=[CtrlC(every_n_steps=100, num_images=1, num_inference_steps=1)])
    # What Ctrl+C did before fit: Python's handler, or SIG_IGN when the tests run as a background job.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted) as stopped:
        trainer.fit(make_module(), datamodule=shapes_data())
    assert stopped.value.code == 128 + signal.SIGINT
    assert safe_load(tmp_path / "runs/test/version_0/checkpoints/last.ckpt")["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) is before, "after fit, Ctrl+C does what it did before"


def test_a_signal_inside_a_gradient_accumulation_window_stops_at_its_end(tmp_path):
    class TermInsideAWindow(SampleGrid):  # SIGTERM after batch 2, the first of the window 2-3
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    callback = TermInsideAWindow(every_n_steps=100, num_images=1, num_inference_steps=1)
    trainer = make_trainer(tmp_path, max_steps=10, every_n_steps=100, callbacks=[callback], accumulate_grad_batches=2)
    with pytest.raises(RunInterrupted) as stopped:
        trainer.fit(make_module(), datamodule=shapes_data())
    assert stopped.value.code == 128 + signal.SIGTERM
    checkpoint = safe_load(tmp_path / "runs/test/version_0/checkpoints/last.ckpt")
    # The window's gradients were not dropped: batch 3 ran and the optimizer stepped on both.
    assert checkpoint["global_step"] == 2
    assert checkpoint["ConceptShapesDataModule"]["data_position"]["batches"] == 4


# ---- resume rules --------------------------------------------------------------------------------

def _fit(tmp_path, max_steps, ckpt=None, version=None, callbacks=()):
    trainer = make_trainer(tmp_path, max_steps=max_steps, version=version, callbacks=list(callbacks))
    trainer.fit(make_module(), datamodule=shapes_data(), ckpt_path=ckpt)
    return trainer


def test_a_finished_run_can_be_finished_again_and_extended(tmp_path):
    _fit(tmp_path, 4, callbacks=[ExportDiffusers()])
    last = tmp_path / "runs/test/version_0/checkpoints/last.ckpt"
    _fit(tmp_path, 4, ckpt=last, version=0, callbacks=[ExportDiffusers()])  # nothing left to train: no crash
    _fit(tmp_path, 4, ckpt=last, version=0, callbacks=[ExportDiffusers()])
    _fit(tmp_path, 6, ckpt=last, version=0, callbacks=[ExportDiffusers()])
    run = tmp_path / "runs/test/version_0"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("export")) == ["export", "export-step000006"]
    assert json.loads((run / "export/diffprobe.json").read_text())["global_step"] == 4
    assert safe_load(last)["global_step"] == 6 and not list(run.rglob("*-v1*"))


def test_resuming_an_older_checkpoint_under_the_cli_leaves_its_run_untouched(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny_run_config(tmp_path / "tiny.yaml", max_steps=4)
    train_main(["fit", "--config", "tiny.yaml"])
    old_run = tmp_path / "runs/tiny/version_0"
    before = {p: p.stat().st_mtime_ns for p in old_run.rglob("*")}
    cli = train_main(["fit", "--config", "tiny.yaml", "--trainer.max_steps", "6", "--ckpt_path", str(old_run / "checkpoints/step=000002.ckpt")])
    assert "not the newest checkpoint" in capsys.readouterr().err
    assert Path(cli.trainer.log_dir).name == "version_1" and cli.trainer.global_step == 6
    assert {p: p.stat().st_mtime_ns for p in old_run.rglob("*")} == before
    # The newest checkpoint under another run name continues its own run, and says so.
    cli = train_main(["fit", "--config", "tiny.yaml", "--trainer.logger.init_args.name", "other", "--trainer.max_steps", "6",
                      "--ckpt_path", str(old_run / "checkpoints/last.ckpt")])
    assert "continues in place" in capsys.readouterr().err
    assert Path(cli.trainer.log_dir).resolve() == old_run.resolve() and not (tmp_path / "runs/other").exists()
    assert safe_load(old_run / "checkpoints/last.ckpt")["global_step"] == 6 and not list(old_run.rglob("*-v1*"))


# ---- a bad --ckpt_path is refused before anything is built ---------------------------------------

@pytest.fixture(scope="module")
def trained_checkpoint(unconditional_run) -> Path:
    """The shared tiny run's last.ckpt (conftest.py): a good checkpoint, read and never written."""
    return unconditional_run / "checkpoints/last.ckpt"


def _bad_checkpoint(kind: str, tmp_path: Path, good: Path) -> Path:
    path = tmp_path / "bad.ckpt"
    if kind == "missing":
        return tmp_path / "nowhere.ckpt"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "not diffprobe":
        torch.save({"state_dict": {}}, path)
    elif kind == "crafted":
        checkpoint = torch.load(good, weights_only=True)
        checkpoint["hyper_parameters"]["note"] = CreatesAFile(str(tmp_path / "ran.txt"))
        torch.save(checkpoint, path)
    return path


class CreatesAFile:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


BAD = {
    "missing": "does not exist",
    "directory": "is a directory",
    "empty": "the file is empty",
    "truncated": "truncated or not a torch file",
    "random": "truncated or not a torch file",
    "not diffprobe": "not a diffprobe training checkpoint",
    "crafted": "refusing to load",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_ckpt_path_is_refused_before_a_run_directory_exists(kind, tmp_path, monkeypatch, trained_checkpoint):
    monkeypatch.chdir(tmp_path)
    tiny_run_config(tmp_path / "tiny.yaml")
    bad = _bad_checkpoint(kind, tmp_path, trained_checkpoint)
    with pytest.raises(SystemExit) as refused:
        train_main(["fit", "--config", "tiny.yaml", "--ckpt_path", str(bad)])
    assert BAD[kind] in str(refused.value.code) and str(bad.name) in str(refused.value.code)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ran.txt").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        (["--model.unet", json.dumps({**TINY_UNET, "block_out_channels": [16, 16]})], "unet.block_out_channels: checkpoint [8, 16], configured [16, 16]"),
        (["--data.init_args.image_size", "32"], "image size: checkpoint 16px, configured 32px"),
    ],
)
def test_a_checkpoint_of_another_model_is_refused_before_training(override, expected, tmp_path, monkeypatch, trained_checkpoint):
    monkeypatch.chdir(tmp_path)
    tiny_run_config(tmp_path / "tiny.yaml")
    with pytest.raises(SystemExit) as refused:
        train_main(["fit", "--config", "tiny.yaml", "--ckpt_path", str(trained_checkpoint), *override])
    assert expected in str(refused.value.code) and "holds another model" in str(refused.value.code)
    assert not (tmp_path / "runs").exists()


# ---- callback state and needs ------------------------------------------------------------------

def test_two_instances_of_one_callback_keep_their_own_state(tmp_path):
    every_2 = SampleGrid(every_n_steps=2, num_images=1, num_inference_steps=1, weights="ema")
    every_3 = SampleGrid(every_n_steps=3, num_images=1, num_inference_steps=1, weights="raw")
    trainer = make_trainer(tmp_path, max_steps=5, callbacks=[every_2, every_3])
    trainer.fit(make_module(), datamodule=shapes_data())
    states = safe_load(tmp_path / "runs/test/version_0/checkpoints/last.ckpt")["callbacks"]
    grids = {k: v["last_step"] for k, v in states.items() if k.startswith("SampleGrid")}
    assert len(grids) == 2 and every_2.state_key != every_3.state_key
    # step=000004.ckpt: the every-2 grid last sampled at 4, the every-3 grid at 3
    at_4 = safe_load(tmp_path / "runs/test/version_0/checkpoints/step=000004.ckpt")["callbacks"]
    assert at_4[every_2.state_key]["last_step"] == 4 and at_4[every_3.state_key]["last_step"] == 3


def test_observers_need_a_tensorboard_logger_and_say_so(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, callbacks=[SampleGrid(every_n_steps=1)], logger=False)
    with pytest.raises(ValueError, match="SampleGrid writes to TensorBoard, and this Trainer has no TensorBoardLogger"):
        trainer.fit(make_module(), datamodule=shapes_data())
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("folder", ["../outside", "/tmp/abs", "a/../../b"])
def test_export_folder_stays_inside_the_run(folder):
    with pytest.raises(ValueError, match="inside the run"):
        ExportDiffusers(folder=folder)



@pytest.mark.parametrize("callback", [SampleGrid(), ExportDiffusers()])
def test_rank_zero_observers_refuse_a_sharded_strategy(callback):
    from lightning.pytorch.strategies import FSDPStrategy

    class ShardedTrainer:  # FSDP itself needs GPUs; the check only looks at the strategy
        strategy = FSDPStrategy()

    with pytest.raises(ValueError, match="cannot do. Train with --trainer.strategy ddp"):
        callback.setup(ShardedTrainer(), None, "fit")


def test_a_run_ending_between_checkpoint_steps_leaves_last_ckpt_at_its_end(tmp_path):
    _fit(tmp_path, 5)  # checkpoints every 2 steps
    run = tmp_path / "runs/test/version_0"
    assert safe_load(run / "checkpoints/last.ckpt")["global_step"] == 5


def test_checkpoints_from_before_state_keys_restore_their_callback_state(tmp_path):
    _fit(tmp_path, 2, callbacks=[SampleGrid(every_n_steps=2, num_images=1, num_inference_steps=1)])
    last = tmp_path / "runs/test/version_0/checkpoints/last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    key = next(k for k in checkpoint["callbacks"] if k.startswith("SampleGrid"))
    checkpoint["callbacks"]["SampleGrid"] = checkpoint["callbacks"].pop(key)  # how they were saved before
    torch.save(checkpoint, last)
    grid = SampleGrid(every_n_steps=2, num_images=1, num_inference_steps=1)
    _fit(tmp_path, 3, ckpt=last, version=0, callbacks=[grid])
    steps = _tag_steps(tmp_path / "runs/test/version_0")["samples/ema"]
    assert steps == [0, 2, 3], "step 2 is re-drawn once after the purge, not twice"


def test_a_resume_keeps_what_probe_commands_wrote_past_the_resume_step(tmp_path):
    # probe.py linear on a run at steps 2 and 4, then the run resumed from last.ckpt (step 4): the
    # resume hides the run's history from step 4 on, but not the command's (its table says step 4
    # is done, so nothing would ever write that point again).
    _fit(tmp_path, 4, callbacks=[OnlineProbes(layers=["mid_block"], num_buckets=1, log_every_n_steps=2)])
    run = tmp_path / "runs/test/version_0"
    offline = LazyWriter(run)
    offline.scalars({"probe_ckpt/shape/mid_block/t0050/acc": 0.5}, 2)
    offline.scalars({"probe_ckpt/shape/mid_block/t0050/acc": 0.7}, 4)
    offline.close()
    _fit(tmp_path, 6, ckpt=run / "checkpoints/last.ckpt", version=0, callbacks=[OnlineProbes(layers=["mid_block"], num_buckets=1, log_every_n_steps=2)])
    steps = _tag_steps(run)
    assert steps["probe_ckpt/shape/mid_block/t0050/acc"] == [2, 4]
    # OnlineProbes logged step 4 before the checkpoint; the resume hid it, so it is written again.
    assert steps["probe_online/shape/mid_block/t0000-0099/acc"] == [2, 4, 6]
    assert 5 in steps["train/loss"] and not _not_increasing(steps), "the run's own tags are purged and continue"


def test_ema_averages_stay_float32_under_half_precision():
    # What Lightning's "bf16-true" precision does to the module: module.to(torch.bfloat16).
    module = make_module(ema_decay=0.9999).to(torch.bfloat16)
    assert next(module.unet.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in module.ema.parameters())
    module.ema.schedule.optimization_step = 10**6  # past the warm-up: decay 0.9999
    before = [p.clone() for p in module.ema.parameters()]
    with torch.no_grad():
        for p in module.unet.parameters():
            p.add_(1.0)
    module.ema.step(module.trained_parameters())
    moved = [bool((a != b).any()) for a, b in zip(module.ema.parameters(), before)]
    assert all(moved), "fp32 averages follow a 1e-4 update that bf16 averages would round away"
