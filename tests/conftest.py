"""pytest's fixtures; the helpers tests import are in helpers.py."""

from __future__ import annotations

import os

# Before any Hugging Face import: they read these once. Tests never touch the network.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from diffprobe.training.datamodules import ConceptShapesDataModule  # noqa: E402
from helpers import shapes_data  # noqa: E402


@pytest.fixture
def tiny_data() -> ConceptShapesDataModule:
    return shapes_data()
