"""ExportDiffusers: write the trained model as a diffusers folder when ``fit`` ends."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from diffprobe import checkpoint


class ExportDiffusers(pl.Callback):
    """Args:
        folder: name of the export folder inside the run directory.
        use_ema: export the EMA weights (what one samples with) rather than the raw ones.
    """

    def __init__(self, folder: str = "export", use_ema: bool = True):
        if not folder or Path(folder).is_absolute():
            raise ValueError(f"folder must be a relative folder name inside the run, got {folder!r}")
        self.folder, self.use_ema = folder, use_ema
        self.exported_to: Path | None = None

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        # trainer.log_dir broadcasts, so every rank asks for it; only rank zero writes.
        target = Path(trainer.log_dir or trainer.default_root_dir) / self.folder
        if not trainer.is_global_zero:
            return
        if target.exists() and any(target.iterdir()):  # a resumed run: keep the earlier export too
            target = target.with_name(f"{self.folder}-step{trainer.global_step:06d}")
        self.exported_to = checkpoint.export(pl_module, target, use_ema=self.use_ema)
        rank_zero_info(f"diffprobe: exported diffusers folder to {self.exported_to}")
