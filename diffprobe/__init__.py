"""diffprobe: train or fine-tune diffusers DDPM UNets with Lightning and see what they learn at each timestep."""

from diffprobe.captions import CaptionEncoder, CaptionTokenizer
from diffprobe.checkpoint import export, find_checkpoints, load_exported, load_module
from diffprobe.data.module import ConceptShapesDataModule, HFDataModule, ImageDataModule
from diffprobe.data.shapes import CONCEPTS, ConceptShapes
from diffprobe.module import DiffusionModule
from diffprobe.sampling import StepRecord, denoise, generate
from diffprobe.unet import CONDITIONAL_PRESETS, UNCONDITIONAL_PRESETS, build_unet, load_pretrained

__version__ = "0.1.0"

__all__ = [
    "CONCEPTS",
    "CONDITIONAL_PRESETS",
    "UNCONDITIONAL_PRESETS",
    "CaptionEncoder",
    "CaptionTokenizer",
    "ConceptShapes",
    "ConceptShapesDataModule",
    "DiffusionModule",
    "HFDataModule",
    "ImageDataModule",
    "StepRecord",
    "build_unet",
    "denoise",
    "export",
    "find_checkpoints",
    "generate",
    "load_exported",
    "load_module",
    "load_pretrained",
]
