"""AtomicCheckpointIO: a checkpoint file is either the old one or the complete new one.

Lightning's TorchCheckpointIO writes through an fsspec transaction whose temporary file lives in
TMPDIR; when TMPDIR is another file system (tmpfs on many clusters) the final move is a copy, and
a kill during it leaves a truncated or 0-byte ``last.ckpt`` (a bare EOFError on resume). Here the
temporary file is in the checkpoint's own folder, synced, then renamed over the target: a rename
within one file system is atomic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override


def partial_name(path: Path) -> Path:
    """Where a checkpoint is written before it is renamed to ``path`` (a hidden, non-.ckpt name,
    so no checkpoint listing ever picks it up)."""
    return path.with_name(f".{path.name}.partial")


class AtomicCheckpointIO(TorchCheckpointIO):
    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: fsspec's own transaction semantics apply
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_name(path)  # a leftover of a killed write is simply overwritten
        try:
            with open(partial, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every file system allows it)."""
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
