"""pytest's fixtures; the helpers tests import are in helpers.py."""

from __future__ import annotations

import os

# Before any Hugging Face import: they read these once. Tests never touch the network.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from diffprobe.training.datamodules import ConceptShapesDataModule  # noqa: E402
from helpers import shapes_data  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def reader_cache(tmp_path_factory):
    """Concept readers are cached per data configuration (fidelity.readers): in the session's own
    folder, never the user's ~/.cache, and shared by the tests of one session."""
    folder = tmp_path_factory.mktemp("diffprobe-cache")
    previous = os.environ.get("DIFFPROBE_CACHE")
    os.environ["DIFFPROBE_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("DIFFPROBE_CACHE", None)
    else:
        os.environ["DIFFPROBE_CACHE"] = previous


@pytest.fixture
def tiny_data() -> ConceptShapesDataModule:
    return shapes_data()
