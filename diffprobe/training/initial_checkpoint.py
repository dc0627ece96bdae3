"""InitialCheckpoint: a run keeps its weights from before the first optimizer step.

``checkpoints/step=000000.ckpt`` is the *init* baseline of every probe result (``probes.baselines``):
what the same architecture reads at its initialisation, or, when fine-tuning, at the pretrained
start. DiffusionModule adds this callback to every fit (``keep_initial_weights``).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from typing_extensions import override

from diffprobe.io.runs import INITIAL_CHECKPOINT


# A Checkpoint subclass: Lightning runs checkpoint callbacks after the others, so the step-0
# observations (sample grid, probes) are logged before the file is written.
class InitialCheckpoint(Checkpoint):
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.global_step != 0:  # a resumed run kept its step-0 weights when it began
            return
        folders = [c.dirpath for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
        if not folders:  # no checkpoints at all: nothing to compare later ones with
            return
        path = Path(folders[0]) / INITIAL_CHECKPOINT
        if not path.exists():  # written once per run folder (a fit restarted at step 0 keeps the first)
            trainer.save_checkpoint(path, weights_only=False)  # collective: every rank calls it, rank zero writes
