"""AtomicCheckpointIO: a checkpoint file is either the old one or the complete new one.

Lightning's TorchCheckpointIO writes through an fsspec transaction whose temporary file lives in
TMPDIR; when TMPDIR is another file system (tmpfs on many clusters) the final move is a copy, and
a kill during it leaves a truncated or 0-byte ``last.ckpt`` (a bare EOFError on resume). Here the
write goes through :func:`diffprobe.io.atomic.atomic_write`: a temporary file in the checkpoint's
own folder, synced, then renamed over the target.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from diffprobe.io.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: fsspec's own transaction semantics apply
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_write(path, lambda handle: torch.save(checkpoint, handle))
