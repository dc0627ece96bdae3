"""How diffprobe uses the CPU's cores when it runs on the CPU: politely, because a laptop is rarely
idle.

torch's CPU kernels run on an OpenMP thread pool, one thread per core, whose idle threads spin
(busy-wait) between kernels. On a machine already busy with another process those spinning threads
fight the other process, and each other, for the same cores: on 2 cores with one other busy
process a tiny-UNet forward took 10.9 s with torch's defaults against 0.83 s with one thread. Two
settings make the CPU path degrade in proportion to the load instead:

- ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning. It must be in the
  environment before the OpenMP runtime starts, so the entry scripts call :func:`configure` before
  they import torch.
- the thread count: the cores this process may use (its CPU affinity) less the ones other
  processes keep busy right now (measured from ``/proc/stat`` over a quarter of a second; the
  1-minute load average where there is no ``/proc``, which lags behind a load that just ended),
  at least one.

Each is only a default: ``OMP_WAIT_POLICY`` / ``OMP_NUM_THREADS`` set by the user are kept, and
``DIFFPROBE_CPU_THREADS=<n>`` fixes the thread count (``DIFFPROBE_CPU_THREADS=all`` uses every
core whatever the load). Nothing here touches a GPU run's speed: the thread pool only runs CPU work.
"""

from __future__ import annotations

import math
import os
import time

__all__ = ["available_cores", "busy_cores", "configure", "thread_count"]


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a job's allocation), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return None


def _cpu_times() -> tuple[int, int, int] | None:
    """(busy, total, cores) jiffies since boot summed over the cores this process may use (its
    affinity, e.g. a job's allocation on a shared node), from /proc/stat; None without it."""
    allowed = _allowed_cpus()
    busy = total = cores = 0
    try:
        with open("/proc/stat") as handle:
            for line in handle:
                name, *values = line.split()
                if not name.startswith("cpu") or name == "cpu" or (allowed is not None and int(name[3:]) not in allowed):
                    continue
                fields = [int(v) for v in values]
                idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
                busy, total, cores = busy + sum(fields) - idle, total + sum(fields), cores + 1
    except (OSError, ValueError):
        return None
    return (busy, total, cores) if cores else None


def busy_cores(window: float = 0.25) -> float:
    """How many of this process's cores other processes keep busy now (it is idle while it measures)."""
    first = _cpu_times()
    if first is None:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):  # no load figure on this system: assume idle
            return 0.0
    time.sleep(window)
    second = _cpu_times()
    if second is None:  # /proc/stat became unreadable while it measured: assume idle, as above
        return 0.0
    busy, total = second[0] - first[0], second[1] - first[1]
    return first[2] * busy / total if total > 0 else 0.0


def thread_count(cores: int | None = None, load: float | None = None) -> int:
    """Threads for torch's CPU kernels: the cores left over by the other processes' load, >= 1."""
    cores = available_cores() if cores is None else cores
    load = busy_cores() if load is None else load
    busy = math.floor(load + 0.5)  # cores other processes keep busy, to the nearest whole one
    return max(1, min(cores, cores - busy))


def configure() -> int | None:
    """Set diffprobe's CPU defaults (see the module docstring); call before importing torch.
    Returns the thread count it chose, or None where the user's own setting stands."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    requested = os.environ.get("DIFFPROBE_CPU_THREADS", "").strip().lower()
    if requested == "all":
        return None
    if requested:
        threads = int(requested) if requested.isdigit() else 0
        if threads < 1:
            raise ValueError(f"DIFFPROBE_CPU_THREADS must be a positive number of threads or 'all', got {requested!r}")
    elif "OMP_NUM_THREADS" in os.environ:  # the user's choice
        return None
    else:
        threads = thread_count()
    # Before torch starts its pool, so the pool is made this size (torch reads OMP_NUM_THREADS).
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads
