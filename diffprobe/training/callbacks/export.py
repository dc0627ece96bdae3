"""ExportDiffusers: write the trained model as a diffusers folder when ``fit`` ends."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from diffprobe import interrupt
from diffprobe.diffusion.folders import exported_step
from diffprobe.training.callbacks.periodic import refuse_sharded_strategy
from diffprobe.training.checkpoints import export_module


class ExportDiffusers(pl.Callback):
    """Args:
        folder: name of the export folder inside the run directory.
        use_ema: export the EMA weights (what one samples with) rather than the raw ones.

    A run finished again after a resume keeps its earlier export and adds ``<folder>-step<N>``;
    finishing at a step that is already exported writes nothing.
    """

    def __init__(self, folder: str = "export", use_ema: bool = True):
        if not folder or Path(folder).is_absolute() or ".." in Path(folder).parts:
            raise ValueError(f"folder must be a relative folder name inside the run (no '..'), got {folder!r}")
        self.folder, self.use_ema = folder, use_ema
        self.exported_to: Path | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.check_trainer(trainer)

    def check_trainer(self, trainer: pl.Trainer) -> None:
        refuse_sharded_strategy(trainer, "ExportDiffusers")

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        # trainer.log_dir broadcasts, so every rank asks for it; only rank zero writes.
        run = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero or interrupt.stop_requested() is not None:
            return  # an interrupted run is exported when it finishes
        step = trainer.global_step
        for target in (run / self.folder, run / f"{self.folder}-step{step:06d}"):
            if not target.exists() or not any(target.iterdir()):
                self.exported_to = export_module(pl_module, target, use_ema=self.use_ema, step=step)
                rank_zero_info(f"diffprobe: exported diffusers folder to {self.exported_to}")
                return
            if exported_step(target) == step:
                self.exported_to = target
                rank_zero_info(f"diffprobe: step {step} is already exported in {target}")
                return
        raise FileExistsError(f"{run / f'{self.folder}-step{step:06d}'} exists and holds an export of another step; move it away")
