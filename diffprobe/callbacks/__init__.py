"""Callbacks decide WHEN to observe or write; the core modules decide HOW."""

from diffprobe.callbacks.export import ExportDiffusers
from diffprobe.callbacks.samples import SampleGrid

__all__ = ["ExportDiffusers", "SampleGrid"]
