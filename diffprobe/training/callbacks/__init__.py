"""Callbacks decide WHEN to observe or write; the core modules decide HOW."""

from diffprobe.training.callbacks.attention_recorder import AttentionRecorder
from diffprobe.training.callbacks.export import ExportDiffusers
from diffprobe.training.callbacks.fidelity import ConceptFidelity
from diffprobe.training.callbacks.online_probes import OnlineProbes
from diffprobe.training.callbacks.prediction_evolution import PredictionEvolution
from diffprobe.training.callbacks.probe_monitor import ProbeMonitor
from diffprobe.training.callbacks.progress import StepProgressBar
from diffprobe.training.callbacks.samples import SampleGrid

__all__ = ["AttentionRecorder", "ConceptFidelity", "ExportDiffusers", "OnlineProbes", "PredictionEvolution", "ProbeMonitor", "SampleGrid", "StepProgressBar"]
