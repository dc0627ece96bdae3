"""Data: ConceptShapes (built in, ground-truth concepts), Hugging Face / local data sets, DataModules."""

from diffprobe.data.module import ConceptShapesDataModule, HFDataModule, ImageDataModule
from diffprobe.data.shapes import CONCEPT_NAMES, CONCEPTS, ConceptShapes

__all__ = ["CONCEPTS", "CONCEPT_NAMES", "ConceptShapes", "ConceptShapesDataModule", "HFDataModule", "ImageDataModule"]
