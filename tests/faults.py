"""Fault injection for the reliability tests: a tiny run config with every observer on, callbacks
that kill or signal the training process at a chosen step, and a subprocess runner.

The callbacks do nothing unless their environment variable is set, so the interrupted run, its
resumption and the uninterrupted reference all use one config (same callbacks, same state keys).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from lightning.pytorch import Callback

from helpers import REPO, TINY_UNET

TESTS = Path(__file__).resolve().parent


class KillAtStep(Callback):
    """SIGKILL this process at the end of step $DIFFPROBE_TEST_KILL_AT (as `kill -9` would)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if os.environ.get("DIFFPROBE_TEST_KILL_AT") == str(trainer.global_step):
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(Callback):
    """At the end of step $DIFFPROBE_TEST_TERM_AT, send $DIFFPROBE_TEST_TERM_SIGNAL (default SIGTERM)
    to this process if its global rank is in $DIFFPROBE_TEST_TERM_RANKS (comma-separated; default
    every rank), as SLURM signals a job's tasks."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ranks = os.environ.get("DIFFPROBE_TEST_TERM_RANKS")
        if os.environ.get("DIFFPROBE_TEST_TERM_AT") == str(trainer.global_step) and (ranks is None or str(trainer.global_rank) in ranks.split(",")):
            os.kill(os.getpid(), getattr(signal, os.environ.get("DIFFPROBE_TEST_TERM_SIGNAL", "SIGTERM")))


class SignalDuringEvaluation(Callback):
    """At step $DIFFPROBE_TEST_SIGNAL_AT, send $DIFFPROBE_TEST_SIGNAL (default SIGTERM) to this
    process from inside the second UNet call of the next evaluation (ProbeMonitor's feature
    extraction runs right after this callback), and count the UNet calls that follow it into
    $DIFFPROBE_TEST_REPORT (JSON) when the process exits."""

    def __init__(self):
        self.calls_after_signal = -1
        self.signalled_at_step = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if os.environ.get("DIFFPROBE_TEST_SIGNAL_AT") != str(trainer.global_step) or self.signalled_at_step is not None:
            return
        self.signalled_at_step = trainer.global_step
        calls = {"n": 0}
        signum = getattr(signal, os.environ.get("DIFFPROBE_TEST_SIGNAL", "SIGTERM"))

        def count(module, args):
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), signum)
                self.calls_after_signal = 0
            elif calls["n"] > 2:
                self.calls_after_signal += 1

        pl_module.unet.register_forward_pre_hook(count)
        import atexit

        atexit.register(self._report)

    def _report(self):
        Path(os.environ["DIFFPROBE_TEST_REPORT"]).write_text(json.dumps({"calls_after_signal": self.calls_after_signal, "step": self.signalled_at_step}))


class RankChecksum(Callback):
    """At the end of fit, write each rank's sum of UNet weights to $DIFFPROBE_TEST_CHECKSUMS/rank<k>.json."""

    def on_train_end(self, trainer, pl_module):
        folder = os.environ.get("DIFFPROBE_TEST_CHECKSUMS")
        if folder:
            total = sum(float(p.detach().double().sum()) for p in pl_module.unet.parameters())
            Path(folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(total))


# The settings of conftest's tiny_config_run (the uninterrupted reference the kill -9 and DDP tests
# compare with): 40 probe images, so that two runs' ProbeMonitor accuracies can be compared.
TINY_CONFIG_RUN = dict(probe_images=40)


def tiny_run_config(
    path: Path, *, max_steps: int = 8, name: str = "tiny", probe_images: int = 12, probe_batch: int = 64, seed: int = 0, checkpoint_every: int = 2, train_size: int = 40
) -> Path:
    """The quick start's callbacks on a tiny UNet (16x16, T = 100): checkpoints every 2 steps,
    samples every 2, ProbeMonitor / recorders every 4 (AttentionRecorder on one layer: a figure per
    layer is most of its cost), online probes logged every 2."""
    config = {
        "seed_everything": seed,
        "model": {"preset": "tiny", "unet": dict(TINY_UNET), "num_train_timesteps": 100, "learning_rate": 1e-3, "warmup_steps": 1, "ema_decay": 0.9, "loss_buckets": 4},
        "data": {"class_path": "diffprobe.training.ConceptShapesDataModule", "init_args": {"image_size": 16, "train_size": train_size, "heldout_size": 16, "batch_size": 8}},
        "trainer": {
            "accelerator": "cpu",
            "max_steps": max_steps,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs", "name": name}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"filename": "step={step:06d}", "auto_insert_metric_name": False, "every_n_train_steps": checkpoint_every, "save_top_k": -1, "save_last": True}},
                {"class_path": "diffprobe.training.callbacks.SampleGrid", "init_args": {"every_n_steps": 2, "num_images": 2, "num_inference_steps": 3}},
                {"class_path": "diffprobe.training.callbacks.OnlineProbes", "init_args": {"num_buckets": 2, "log_every_n_steps": 2}},
                {"class_path": "faults.SignalDuringEvaluation"},
                {"class_path": "diffprobe.training.callbacks.ProbeMonitor", "init_args": {"every_n_steps": 4, "num_images": probe_images, "method": "ridge", "batch_size": probe_batch, "heatmaps": False}},
                {"class_path": "diffprobe.training.callbacks.AttentionRecorder", "init_args": {"every_n_steps": 4, "num_images": 2, "layers": ["mid_block.attentions.0"]}},
                {"class_path": "diffprobe.training.callbacks.PredictionEvolution", "init_args": {"every_n_steps": 4, "num_images": 2, "trajectory_steps": 3, "trajectory_every": 1}},
                {"class_path": "diffprobe.training.callbacks.ExportDiffusers"},
                {"class_path": "faults.KillAtStep"},
                {"class_path": "faults.SignalAtStep"},
                {"class_path": "faults.RankChecksum"},
            ],
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def train(cwd: Path, *args: str, env: dict | None = None, timeout: float = 300, processes: int = 1) -> subprocess.CompletedProcess:
    """``python train.py fit <args>`` in ``cwd`` as a user runs it (one thread, tests/ importable)."""
    environment = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), "fit", *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_ranks(cwd: Path, *args: str, env: dict | None = None, world_size: int = 2, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """``python train.py fit <args> --trainer.devices <world_size> --trainer.strategy ddp`` as a cluster
    launcher (SLURM's srun, torchrun) starts it: one process per rank, started here (LOCAL_RANK set,
    so Lightning starts none), each one's exit status seen. Returns the ranks' results."""
    port = str(free_port())
    ranks = []
    for rank in range(world_size):
        environment = {
            **os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", **(env or {}),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(world_size), "NODE_RANK": "0", "LOCAL_RANK": str(rank),
        }
        command = [sys.executable, str(REPO / "train.py"), "fit", *args, "--trainer.devices", str(world_size), "--trainer.strategy", "ddp"]
        ranks.append(subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for process in ranks:
            out, err = process.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:
        for process in ranks:  # a rank left waiting in a collective must not outlive the test
            if process.poll() is None:
                process.kill()
    return results
