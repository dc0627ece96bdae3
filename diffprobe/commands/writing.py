"""How a probe.py command that measures checkpoint after checkpoint writes into its output folder:
one writer at a time (a lock naming the process), and a clean stop on SIGTERM / SIGINT.

Tables are written whole after each checkpoint (atomically), so a stop discards only the checkpoint
in progress: the process exits with 128 + the signal number (143 / 130), and a rerun measures what
is missing, nothing twice. A second Ctrl+C quits at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diffprobe import interrupt
from diffprobe.commands.common import CommandError
from diffprobe.io.lock import FolderLocked, folder_lock

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _handler(command: str):
    def handle(signum: int, frame) -> None:
        if interrupt.stop_requested() is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: out now
        interrupt.request_stop(signum)
        # os.write, not print: a print interrupted inside another write raises "reentrant call".
        os.write(2, f"probe.py {command}: {signal.Signals(signum).name} received: stopping; the checkpoint in progress is discarded\n".encode())

    return handle


@contextmanager
def guarded_output(folder: Path, command: str) -> Iterator[None]:
    """Hold ``folder``'s lock and stop cleanly on SIGTERM / SIGINT while inside."""
    try:
        lock = folder_lock(folder, f"probe.py {command}", warn=lambda message: print(f"probe.py {command}: {message}", file=sys.stderr))
        lock.__enter__()
    except FolderLocked as error:
        raise CommandError(str(error)) from None
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS} if main else {}
    for signum in previous:
        signal.signal(signum, _handler(command))
    try:
        yield
    except interrupt.Interrupted:
        stopped = interrupt.stop_requested() or signal.SIGTERM
        print(f"probe.py {command}: stopped by {signal.Signals(stopped).name}; {folder} holds every finished checkpoint: run the same command to continue", file=sys.stderr)
        raise SystemExit(128 + stopped) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        interrupt.clear()
        lock.__exit__(None, None, None)
