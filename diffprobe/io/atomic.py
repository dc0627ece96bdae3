"""Atomic writes: a file is either as it was or complete, whatever moment a process is killed.

The new content goes to a hidden temporary file in the target's own folder (a rename across file
systems would be a copy), is flushed and synced, then renamed over the target; the folder is synced
so that the rename itself survives a crash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def partial_name(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place (hidden, and with a suffix no
    listing of checkpoints, tables or figures ever picks up)."""
    return path.with_name(f".{path.name}.partial")


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """``write(handle)`` fills a temporary file that then replaces ``path`` in one rename. On any
    error (a full disk, a kill) ``path`` keeps its old content and the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_name(path)  # a leftover of a killed write is simply overwritten
    try:
        with open(partial, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as error:  # a full disk, a read-only folder: said with the file it was for
        raise OSError(error.errno, f"could not write {path}: {error.strerror or error}") from error
    finally:
        partial.unlink(missing_ok=True)
    fsync_folder(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=1))


def save_torch(path: str | Path, data: Any) -> Path:
    """``torch.save`` of plain data (tensors, numbers, strings, lists, dicts), atomically."""
    import torch

    return atomic_write(path, lambda handle: torch.save(data, handle))


def save_figure(figure, path: str | Path, **options) -> Path:
    """A matplotlib figure as a PNG (or the format of ``path``'s suffix), atomically."""
    path = Path(path)
    return atomic_write(path, lambda handle: figure.savefig(handle, format=path.suffix.lstrip(".") or "png", **options))
