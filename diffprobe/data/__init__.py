"""Data sets as plain torch Datasets: ConceptShapes (built in, ground-truth concepts), Hugging Face
/ local image folders (``hf``), and the fixed probe set (``probe_set``). The Lightning DataModules
that wrap them for training are ``diffprobe.training.datamodules``."""

from collections.abc import Sized

from torch.utils.data import Dataset

from diffprobe.data.shapes import CONCEPT_NAMES, CONCEPTS, ConceptShapes

__all__ = ["CONCEPTS", "CONCEPT_NAMES", "ConceptShapes", "dataset_size"]


def dataset_size(dataset: Dataset) -> int:
    """How many items a data set has (torch's ``Dataset`` does not promise a length; every diffprobe
    data set has one)."""
    if not isinstance(dataset, Sized):
        raise TypeError(f"{type(dataset).__name__} has no length: a diffprobe data set needs one")
    return len(dataset)
