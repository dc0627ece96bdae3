"""The training layer: everything that imports Lightning. The DiffusionModule and its parts (EMA,
optimisation, online heads, observation UNet, finite guard, run safety), the DataModules, checkpoint
IO and resume rules, and the callbacks (``training.callbacks``). Nothing outside ``training`` and
``commands`` imports it."""

from diffprobe.training.checkpoints import export_module, load_module, module_weights
from diffprobe.training.datamodules import ConceptShapesDataModule, HFDataModule, ImageDataModule
from diffprobe.training.module import DiffusionModule

__all__ = ["ConceptShapesDataModule", "DiffusionModule", "HFDataModule", "ImageDataModule", "export_module", "load_module", "module_weights"]
