"""The concept reader (diffprobe.intervene.reader) that probe.py intervene and fidelity judge images with:
it reads rendered ConceptShapes images, and a saved reader loads back the same."""

from __future__ import annotations

import pytest
import torch

from diffprobe.data.shapes import CONCEPTS, ConceptShapes
from diffprobe.intervene.reader import TrainedReader, train_reader


def test_reader_reads_rendered_images_and_round_trips(tmp_path):
    train, heldout = ConceptShapes(1000, 16, "train"), ConceptShapes(300, 16, "test")
    trained = train_reader(train, heldout, CONCEPTS, steps=100, seed=0)
    # Coarse concepts are learnt in a few steps (here 0.99 both); the full reader (3000 steps) passes 95% on all.
    assert trained.accuracy["background_colour"] > 0.95 and trained.accuracy["position"] > 0.8
    path = trained.save(tmp_path / "reader.pt")
    loaded = TrainedReader.load(path)
    images = heldout.images[:50].float() / 127.5 - 1
    assert torch.equal(loaded.reader.read(images), trained.reader.read(images))
    assert loaded.accuracy == trained.accuracy
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a diffprobe concept reader"):
        TrainedReader.load(tmp_path / "other.pt")
