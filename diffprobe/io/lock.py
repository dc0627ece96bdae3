"""One writer per output folder: a lock file naming the process that writes there.

Two ``probe.py linear`` on one run would interleave their rows; the second is refused at once with
the first one's PID. A lock left by a process that no longer runs (killed with -9, a crashed node)
is taken over, and the taker says so.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".diffprobe.lock"


class FolderLocked(RuntimeError):
    """Another live process writes into the folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextmanager
def folder_lock(folder: str | Path, what: str, warn=print) -> Iterator[Path]:
    """Hold ``folder``'s lock while inside (the folder is made); FolderLocked when a live process
    holds it. ``what`` names this writer in the lock (e.g. "probe.py linear")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": what})
    for _ in range(2):  # a stale lock is removed once, then taken like a free one
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            pid, host = holder.get("pid"), holder.get("host")
            same_host = host in (None, socket.gethostname())
            if isinstance(pid, int) and (not same_host or _alive(pid)):
                where = "" if same_host else f" on {host}"
                raise FolderLocked(
                    f"{folder} is being written by {holder.get('command', 'another process')} (PID {pid}{where}); wait for it to "
                    f"finish, or give another output folder. If no such process runs, remove {path}"
                ) from None
            warn(f"{path}: taking over a stale lock of PID {pid}, which no longer runs")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(mine)
        break
    else:
        raise FolderLocked(f"{path} could not be taken; remove it if no diffprobe command writes into {folder}")
    try:
        yield path
    finally:
        if _holder(path).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
