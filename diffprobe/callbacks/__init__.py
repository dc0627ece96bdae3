"""Callbacks decide WHEN to observe or write; the core modules decide HOW."""

from diffprobe.callbacks.attention_recorder import AttentionRecorder
from diffprobe.callbacks.export import ExportDiffusers
from diffprobe.callbacks.online_probes import OnlineProbes
from diffprobe.callbacks.prediction_evolution import PredictionEvolution
from diffprobe.callbacks.probe_monitor import ProbeMonitor
from diffprobe.callbacks.progress import StepProgressBar
from diffprobe.callbacks.run_safety import RunInterrupted, RunSafety
from diffprobe.callbacks.samples import SampleGrid

__all__ = ["AttentionRecorder", "ExportDiffusers", "OnlineProbes", "PredictionEvolution", "ProbeMonitor", "RunInterrupted", "RunSafety", "SampleGrid", "StepProgressBar"]
