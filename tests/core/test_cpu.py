"""diffprobe's CPU policy: threads = free cores, passive OpenMP waiting, the user's settings kept."""

from __future__ import annotations

import os

import pytest

from diffprobe import cpu


@pytest.mark.parametrize(("cores", "load", "threads"), [(2, 0.0, 2), (2, 1.0, 1), (2, 1.4, 1), (2, 3.0, 1), (8, 2.6, 5), (8, 0.4, 8)])
def test_threads_are_the_cores_other_processes_leave_free(cores, load, threads):
    assert cpu.thread_count(cores=cores, load=load) == threads


@pytest.fixture
def environment(monkeypatch):
    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "DIFFPROBE_CPU_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cpu, "thread_count", lambda: 1)  # as on a 2-core machine with one busy process
    return monkeypatch


def test_configure_sets_passive_waiting_and_the_free_cores(environment):
    assert cpu.configure() == 1
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["OMP_NUM_THREADS"] == "1"


def test_the_users_own_settings_win(environment):
    environment.setenv("OMP_NUM_THREADS", "3")
    environment.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cpu.configure() is None
    assert os.environ["OMP_NUM_THREADS"] == "3" and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    environment.setenv("DIFFPROBE_CPU_THREADS", "2")
    assert cpu.configure() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    environment.setenv("DIFFPROBE_CPU_THREADS", "all")
    assert cpu.configure() is None
    environment.setenv("DIFFPROBE_CPU_THREADS", "0")
    with pytest.raises(ValueError, match="DIFFPROBE_CPU_THREADS must be a positive number"):
        cpu.configure()


def _proc_stat(monkeypatch, tmp_path, *readings: str, cores=(0, 1)) -> None:
    """/proc/stat reads ``readings`` in turn, and this process may run on ``cores`` (its affinity)."""
    files = iter([tmp_path / f"stat{i}" for i in range(len(readings))])
    for i, text in enumerate(readings):
        (tmp_path / f"stat{i}").write_text(text)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(next(files) if path == "/proc/stat" else path, *a, **k))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cores), raising=False)


def test_busy_cores_are_measured_over_a_window_not_since_boot(monkeypatch, tmp_path):
    # since boot: 100,000 of 400,000 jiffies busy (0.5 cores); in the window: 50 of 100 (1 core)
    _proc_stat(monkeypatch, tmp_path, "cpu0 100000 0 0 100000 0\ncpu1 0 0 0 200000 0\n", "cpu0 100050 0 0 100000 0\ncpu1 0 0 0 200050 0\n")
    assert cpu.busy_cores(window=0.0) == pytest.approx(1.0)  # since boot it would read 0.5 cores


def test_only_the_cores_this_process_may_use_are_counted(monkeypatch, tmp_path):
    # cpu0 fully busy, cpu1 idle, cpu2 fully busy but outside the affinity mask (another job's core):
    # counting cpu2 would read 3 x 300 / 400 = 2.25 busy cores, not 2 x 100 / 200 = 1
    _proc_stat(
        monkeypatch, tmp_path,
        "cpu  300 0 0 100 0\ncpu0 100 0 0 0 0\ncpu1 0 0 0 100 0\ncpu2 200 0 0 0 0\nintr 1\n",
        "cpu  600 0 0 200 0\ncpu0 200 0 0 0 0\ncpu1 0 0 0 200 0\ncpu2 400 0 0 0 0\nintr 1\n",
    )  # fmt: skip
    assert cpu.available_cores() == 2
    assert cpu.busy_cores(window=0.0) == pytest.approx(1.0)
