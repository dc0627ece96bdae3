"""diffprobe: train or fine-tune diffusers DDPM UNets with Lightning and see what they learn at each timestep.

The public names below load on first use (PEP 562), so ``import diffprobe`` and ``probe.py --help``
pay for neither torch nor Lightning; editors and type checkers see them through the
``TYPE_CHECKING`` imports. Names from ``diffprobe.training`` (the DiffusionModule, DataModules,
callbacks) load Lightning; every other name works without it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from diffprobe.capture import capture_features, record_attention
    from diffprobe.data.probe_set import ProbeSet
    from diffprobe.data.shapes import CONCEPTS, ConceptShapes, ShapesDesign
    from diffprobe.diffusion.captions import CaptionEncoder, CaptionTokenizer
    from diffprobe.diffusion.folders import load_exported, load_pretrained, save_exported
    from diffprobe.diffusion.model import DiffusionModel, load_checkpoint
    from diffprobe.diffusion.sampling import StepRecord, denoise, generate
    from diffprobe.diffusion.unet import CONDITIONAL_PRESETS, UNCONDITIONAL_PRESETS, build_unet
    from diffprobe.explain import df_cam, df_rise, explain_step, from_model, lime_saliency, token_relevance
    from diffprobe.io.runs import find_checkpoints
    from diffprobe.probes.pipeline import probe_unet
    from diffprobe.probes.table import ProbeTable
    from diffprobe.training import ConceptShapesDataModule, DiffusionModule, HFDataModule, ImageDataModule, export_module, load_module
    from diffprobe.training.callbacks import (
        AttentionRecorder,
        ExportDiffusers,
        OnlineProbes,
        PredictionEvolution,
        ProbeMonitor,
        SampleGrid,
        StepProgressBar,
    )

# jsonargparse looks a probe.py command up under shorter import paths (diffprobe.<name>): no public
# name may equal a command's (sample, export, linear, ...), or probe.py --help would load torch.
_PUBLIC = {
    "capture_features": "diffprobe.capture",
    "record_attention": "diffprobe.capture",
    "ProbeSet": "diffprobe.data.probe_set",
    "CONCEPTS": "diffprobe.data.shapes",
    "ConceptShapes": "diffprobe.data.shapes",
    "ShapesDesign": "diffprobe.data.shapes",
    "CaptionEncoder": "diffprobe.diffusion.captions",
    "CaptionTokenizer": "diffprobe.diffusion.captions",
    "load_exported": "diffprobe.diffusion.folders",
    "load_pretrained": "diffprobe.diffusion.folders",
    "save_exported": "diffprobe.diffusion.folders",
    "DiffusionModel": "diffprobe.diffusion.model",
    "load_checkpoint": "diffprobe.diffusion.model",
    "StepRecord": "diffprobe.diffusion.sampling",
    "denoise": "diffprobe.diffusion.sampling",
    "generate": "diffprobe.diffusion.sampling",
    "CONDITIONAL_PRESETS": "diffprobe.diffusion.unet",
    "UNCONDITIONAL_PRESETS": "diffprobe.diffusion.unet",
    "build_unet": "diffprobe.diffusion.unet",
    "df_cam": "diffprobe.explain",
    "df_rise": "diffprobe.explain",
    "explain_step": "diffprobe.explain",
    "from_model": "diffprobe.explain",
    "lime_saliency": "diffprobe.explain",
    "token_relevance": "diffprobe.explain",
    "find_checkpoints": "diffprobe.io.runs",
    "ProbeTable": "diffprobe.probes.table",
    "probe_unet": "diffprobe.probes.pipeline",
    "ConceptShapesDataModule": "diffprobe.training",
    "DiffusionModule": "diffprobe.training",
    "HFDataModule": "diffprobe.training",
    "ImageDataModule": "diffprobe.training",
    "export_module": "diffprobe.training",
    "load_module": "diffprobe.training",
    "AttentionRecorder": "diffprobe.training.callbacks",
    "ExportDiffusers": "diffprobe.training.callbacks",
    "OnlineProbes": "diffprobe.training.callbacks",
    "PredictionEvolution": "diffprobe.training.callbacks",
    "ProbeMonitor": "diffprobe.training.callbacks",
    "SampleGrid": "diffprobe.training.callbacks",
    "StepProgressBar": "diffprobe.training.callbacks",
}

__all__ = [
    "AttentionRecorder",
    "CONCEPTS",
    "CONDITIONAL_PRESETS",
    "CaptionEncoder",
    "CaptionTokenizer",
    "ConceptShapes",
    "ConceptShapesDataModule",
    "DiffusionModel",
    "DiffusionModule",
    "ExportDiffusers",
    "HFDataModule",
    "ImageDataModule",
    "OnlineProbes",
    "PredictionEvolution",
    "ProbeMonitor",
    "ProbeSet",
    "ProbeTable",
    "SampleGrid",
    "ShapesDesign",
    "StepProgressBar",
    "StepRecord",
    "UNCONDITIONAL_PRESETS",
    "build_unet",
    "capture_features",
    "denoise",
    "df_cam",
    "df_rise",
    "explain_step",
    "export_module",
    "find_checkpoints",
    "from_model",
    "generate",
    "lime_saliency",
    "load_checkpoint",
    "load_exported",
    "load_module",
    "load_pretrained",
    "probe_unet",
    "record_attention",
    "save_exported",
    "token_relevance",
]
assert sorted(_PUBLIC) == __all__  # one list for editors (TYPE_CHECKING above) and for __getattr__


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'diffprobe' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
