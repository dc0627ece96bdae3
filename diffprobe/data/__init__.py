"""Data sets as plain torch Datasets: ConceptShapes (built in, ground-truth concepts), Hugging Face
/ local image folders (``hf``), and the fixed probe set (``probe_set``). The Lightning DataModules
that wrap them for training are ``diffprobe.training.datamodules``."""

from diffprobe.data.shapes import CONCEPT_NAMES, CONCEPTS, ConceptShapes

__all__ = ["CONCEPTS", "CONCEPT_NAMES", "ConceptShapes"]
