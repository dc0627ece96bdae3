"""probe.py's own outputs survive interruption, concurrency and a full disk: one writer per folder
(a lock naming its PID, stale locks taken over), SIGTERM finishes no half checkpoint and a rerun
continues, and a failed write names the file and leaves the last complete tables as they were."""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffprobe.commands.probe import probe_main
from diffprobe.io.lock import LOCK_FILE, FolderLocked, folder_lock
from diffprobe.training.callbacks import ProbeMonitor
from helpers import REPO, make_module, make_trainer, refusal, shapes_data

LINEAR = ["--layers", "mid_block", "--method", "ridge", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with a checkpoint at every step and a small probe set of its own (ProbeMonitor's, 12 images
    at 2 t), which probe.py linear uses: each checkpoint takes linear about a second, mostly its figures."""
    root = tmp_path_factory.mktemp("run")
    data = shapes_data()
    monitor = ProbeMonitor(every_n_steps=100, num_images=12, timesteps=[0, 50], layers=["mid_block"], method="ridge", heatmaps=False)
    make_trainer(root, max_steps=3, every_n_steps=1, callbacks=[monitor]).fit(make_module(), datamodule=data)
    return root / "runs/test/version_0"


def _rows(folder: Path) -> list[dict]:
    with (folder / "probes.csv").open() as handle:
        return sorted(csv.DictReader(handle), key=lambda r: (int(r["step"]), r["checkpoint"], r["layer"], int(r["t"]), r["concept"]))


def test_one_writer_per_folder_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    with folder_lock(tmp_path, "probe.py linear"):
        with pytest.raises(FolderLocked, match=rf"being written by probe.py linear \(PID {os.getpid()}\)"):
            with folder_lock(tmp_path, "probe.py linear"):
                pass
    assert not (tmp_path / LOCK_FILE).exists(), "the lock goes with its writer"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / LOCK_FILE).write_text(f'{{"pid": {dead}, "command": "probe.py linear"}}')
    seen = []
    with folder_lock(tmp_path, "probe.py linear", warn=seen.append):
        assert (tmp_path / LOCK_FILE).is_file()
    assert seen and "stale lock" in seen[0] and dead in seen[0]


def test_a_second_linear_on_a_folder_being_written_is_refused_at_once(run, tmp_path, capsys):
    out = tmp_path / "probes"
    with folder_lock(out, "probe.py linear"):
        message = refusal(["linear", "--ckpt", str(run / "checkpoints/last.ckpt"), "--out", str(out), *LINEAR], capsys)
    assert f"PID {os.getpid()}" in message and not (out / "probes.csv").exists()


def test_a_full_disk_names_the_file_and_keeps_the_last_complete_table(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "probes"
    probe_main(["linear", "--ckpt", str(run / "checkpoints/last.ckpt"), "--out", str(out), *LINEAR])
    before = (out / "probes.csv").read_bytes()
    import diffprobe.io.atomic

    def full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(diffprobe.io.atomic.os, "fsync", full)
    with pytest.raises(SystemExit) as stopped:
        probe_main(["linear", "--ckpt", str(run / "checkpoints/last.ckpt"), "--out", str(out), *LINEAR, "--overwrite", "true"])
    message = str(stopped.value.code)
    assert "No space left on device" in message and str(out / "probes.csv") in message and len(message.splitlines()) == 1, message
    assert (out / "probes.csv").read_bytes() == before, "the last complete table stays as it was"
    assert not list(out.glob(".*.partial")) and not (out / LOCK_FILE).exists()


def test_an_unwritable_output_folder_is_one_line_naming_the_file(run, tmp_path, monkeypatch):
    # Simulated (the tests may run as root, whom a chmod does not stop): the folder refuses new files.
    import diffprobe.io.atomic

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(diffprobe.io.atomic, "open", refused, raising=False)  # the writer's open()
    with pytest.raises(SystemExit) as stopped:
        probe_main(["linear", "--ckpt", str(run / "checkpoints/last.ckpt"), "--out", str(tmp_path / "probes"), *LINEAR])
    message = str(stopped.value.code)
    assert "Permission denied" in message and str(tmp_path / "probes" / "probes.csv") in message and len(message.splitlines()) == 1, message


def test_sigterm_during_linear_keeps_whole_checkpoints_and_a_rerun_continues(run, tmp_path):
    reference = probe_main(["linear", "--ckpt", str(run), "--out", str(tmp_path / "reference"), *LINEAR])
    out = tmp_path / "stopped"
    command = [sys.executable, str(REPO / "probe.py"), "linear", "--ckpt", str(run), "--out", str(out), *LINEAR]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while not (out / "probes.csv").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    if process.returncode == 0:
        pytest.skip("linear finished before the signal arrived (a machine much faster than this one)")
    assert process.returncode == 143, stderr[-2000:]
    assert "SIGTERM received" in stderr and "run the same command to continue" in stderr
    partial = _rows(out)
    steps = {r["step"] for r in partial}
    per_step = {s: sum(r["step"] == s for r in partial) for s in steps}
    assert len(set(per_step.values())) == 1, "only whole checkpoints in the table"
    assert not (out / LOCK_FILE).exists()
    probe_main(["linear", "--ckpt", str(run), "--out", str(out), *LINEAR])
    assert _rows(out) == _rows(reference), "the rerun adds what is missing, nothing twice, the same numbers"
