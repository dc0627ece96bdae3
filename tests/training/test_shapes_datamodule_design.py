"""ConceptShapesDataModule's design flags reach its splits and its concept reader: the training split
holds no held-out combination, the held-out split does, and the reader (the judge of whether a held-out
combination was generated) sees the same concept signal and every combination."""

from __future__ import annotations

from diffprobe.data.shapes import CONCEPT_NAMES, CONCEPTS
from diffprobe.training.datamodules import ConceptShapesDataModule


def _small_blue(labels):
    return (labels[:, CONCEPT_NAMES.index("size")] == CONCEPTS["size"].index("small")) & (
        labels[:, CONCEPT_NAMES.index("object_colour")] == CONCEPTS["object_colour"].index("blue")
    )


def test_the_design_reaches_the_splits_and_the_reader():
    data = ConceptShapesDataModule(image_size=16, train_size=1500, heldout_size=1500, batch_size=8, heldout_combinations=[["small", "blue"]], colour_contrast=0.5)
    assert not _small_blue(data.train_dataset().labels).any()
    assert _small_blue(data.heldout_dataset().labels).sum() > 40
    assert data.train_dataset().design.colour_contrast == data.heldout_dataset().design.colour_contrast == 0.5
    reader = data.reader_data(max_train_images=1500)
    assert reader.description["colour_contrast"] == 0.5, "a reader of other colours is another cache entry"
    assert _small_blue(reader.train.labels).sum() > 40, "the judge has seen the held-out combination"
    assert "colour_contrast" not in ConceptShapesDataModule(image_size=16, train_size=64, batch_size=8).reader_data(64).description
