"""SLURM's auto-requeue, as RunSafety uses it: which signal announces the end of a job's time, and
``scontrol requeue`` of the job once ``last.ckpt`` is written."""

from __future__ import annotations

import os
import subprocess

import lightning.pytorch as pl
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info


def slurm_requeue_signal(trainer: pl.Trainer) -> int | None:
    """The signal SLURM sends before a job's time is up, when Lightning's auto-requeue is on
    (``SLURMEnvironment(auto_requeue=True)``, its default under SLURM); None otherwise. Read where
    Lightning's own signal connector reads it."""
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal is not None:
        return int(environment.requeue_signal)
    return None


def requeue_slurm_job() -> None:
    """``scontrol requeue`` this job (an array job's own task), as Lightning's auto-requeue does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except FileNotFoundError:
        rank_zero_info(f"diffprobe: scontrol is not on PATH: job {job} was not requeued; resubmit it with --ckpt_path last")
        return
    if result.returncode == 0:
        rank_zero_info(f"diffprobe: requeued SLURM job {job}; it continues with --ckpt_path last")
    else:
        rank_zero_info(f"diffprobe: scontrol requeue {job} failed ({result.returncode}: {result.stderr.strip()}); resubmit it with --ckpt_path last")
