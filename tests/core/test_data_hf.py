"""Real-data path, offline: the tests write small local data sets in each format and train on them."""

import datasets
import numpy as np
import pytest

from diffprobe.training.datamodules import HFDataModule
from helpers import COLOURS, in_memory_dataset, make_module, make_trainer, read_events, write_imagefolder


def test_imagefolder_gives_rgb_in_range_resized_and_labelled(tmp_path):
    data = HFDataModule(str(write_imagefolder(tmp_path / "folder")), image_column="image", concept_columns=["label"], image_size=16, batch_size=4, num_workers=0)
    assert data.concepts == {"label": ("blue", "red")}
    item = data.train_dataset()[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].min() >= -1 and item["image"].max() <= 1
    colour = data.concepts["label"][item["labels"][0]]
    expected = np.array(COLOURS[colour]) / 127.5 - 1
    assert np.allclose(item["image"].mean(dim=(1, 2)).numpy(), expected, atol=0.02)
    assert item["caption"] == colour
    assert len(data.heldout_dataset()) >= 1, "a held-out part is carved out when there is no test split"


def test_grayscale_conversion_keeps_one_channel(tmp_path):
    data = HFDataModule(str(write_imagefolder(tmp_path / "folder")), image_column="image", image_size=16, channels=1, batch_size=4, num_workers=0)
    assert data.train_dataset()[0]["image"].shape == (1, 16, 16)


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_local_formats_train_end_to_end(tmp_path, layout):
    dataset = in_memory_dataset()
    if layout == "save_to_disk":
        datasets.DatasetDict(train=dataset, test=dataset.select(range(4))).save_to_disk(str(tmp_path / "data"))
        source = tmp_path / "data"
    else:
        (tmp_path / "pq").mkdir()
        dataset.to_parquet(str(tmp_path / "pq" / "train.parquet"))
        source = tmp_path / "pq"
    data = HFDataModule(str(source), image_column="picture", concept_columns=["colour", "bright"], image_size=16, batch_size=4, num_workers=0)
    assert data.concepts == {"colour": ("red", "blue"), "bright": ("not_bright", "bright")}
    assert set(data.vocabulary) == {"red", "blue", "not_bright", "bright"}
    module = make_module(conditional=True, vocabulary=data.vocabulary)
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2


def test_missing_image_column_lists_the_columns(tmp_path):
    with pytest.raises(ValueError, match=r"image column 'img' not in .*\['image', 'label'\].*--data.image_column"):
        HFDataModule(str(write_imagefolder(tmp_path / "f")), image_column="img", batch_size=2)


def test_missing_concept_column_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"concept columns \['smiling'\] not in"):
        HFDataModule(str(write_imagefolder(tmp_path / "f")), image_column="image", concept_columns=["smiling"], batch_size=2)


def test_unknown_data_set_says_what_to_give(tmp_path):
    with pytest.raises(ValueError, match="(?s)could not load data set 'no-such-dataset-xyz'.*local folder"):
        HFDataModule("no-such-dataset-xyz", batch_size=2)


def test_grayscale_data_runs_every_picture_callback(tmp_path):
    from diffprobe.training.callbacks import AttentionRecorder, PredictionEvolution, SampleGrid

    data = HFDataModule(str(write_imagefolder(tmp_path / "folder")), image_column="image", concept_columns=["label"], image_size=16, channels=1, batch_size=4, num_workers=0)
    callbacks = [
        SampleGrid(every_n_steps=2, num_images=2, num_inference_steps=2),
        AttentionRecorder(every_n_steps=2, num_images=2),
        PredictionEvolution(every_n_steps=2, num_images=2, trajectory_steps=2, trajectory_every=1),
    ]
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=callbacks)
    trainer.fit(make_module(in_channels=1), datamodule=data)
    images = read_events(trainer.log_dir).Tags()["images"]
    assert {"samples/ema", "pred/x0_hat", "pred/trajectory"} <= set(images)
    assert any(tag.startswith("attention/") for tag in images), "the 1-channel image sits beside its RGB overlays"
