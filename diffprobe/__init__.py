"""diffprobe: train or fine-tune diffusers DDPM UNets with Lightning and see what they learn at each timestep.

The public names below load on first use (PEP 562; export a checkpoint with ``diffprobe.checkpoint.export``): ``import diffprobe.commands.common`` or
``probe.py --help`` must not pay for Lightning and diffusers.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "CONCEPTS": "diffprobe.data.shapes",
    "CONDITIONAL_PRESETS": "diffprobe.unet",
    "UNCONDITIONAL_PRESETS": "diffprobe.unet",
    "CaptionEncoder": "diffprobe.captions",
    "CaptionTokenizer": "diffprobe.captions",
    "ConceptShapes": "diffprobe.data.shapes",
    "ConceptShapesDataModule": "diffprobe.data.module",
    "DiffusionModule": "diffprobe.module",
    "HFDataModule": "diffprobe.data.module",
    "ImageDataModule": "diffprobe.data.module",
    "StepRecord": "diffprobe.sampling",
    "build_unet": "diffprobe.unet",
    "denoise": "diffprobe.sampling",
    "find_checkpoints": "diffprobe.checkpoint",
    "generate": "diffprobe.sampling",
    "load_exported": "diffprobe.checkpoint",
    "load_module": "diffprobe.checkpoint",
    "load_pretrained": "diffprobe.unet",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'diffprobe' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
