import numpy as np
import pytest
import torch

from diffprobe.data.shapes import BACKGROUND_RGB, CONCEPT_NAMES, CONCEPTS, OBJECT_RGB, ConceptShapes, caption, vocabulary


def test_sample_is_a_pure_function_of_seed_and_index():
    a = ConceptShapes(size=40, image_size=16, seed=3)
    b = ConceptShapes(size=10, image_size=16, seed=3)  # a different size must not change sample i
    assert torch.equal(a.images[:10], b.images)
    assert torch.equal(a.labels[:10], b.labels)
    other_seed = ConceptShapes(size=10, image_size=16, seed=4)
    assert not torch.equal(other_seed.labels, b.labels)
    heldout = ConceptShapes(size=10, image_size=16, seed=3, split="test")
    assert not torch.equal(heldout.labels, b.labels)


@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_items_have_the_promised_shapes_and_range(image_size):
    data = ConceptShapes(size=8, image_size=image_size)
    item = data[5]
    assert item["image"].shape == (3, image_size, image_size)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["mask"].shape == (1, image_size, image_size) and item["mask"].dtype == torch.bool
    assert item["labels"].shape == (len(CONCEPTS),)
    assert item["index"] == 5


def test_labels_masks_and_pixels_agree():
    data = ConceptShapes(size=300, image_size=32, seed=1)
    col = {name: i for i, name in enumerate(CONCEPT_NAMES)}
    areas = {s: [] for s in range(3)}
    for i in range(len(data)):
        item = data[i]
        labels = item["labels"]
        mask = item["mask"][0]
        assert mask.any(), "every object is visible"
        # Position: the mask's centroid lies in the labelled 3x3 cell.
        ys, xs = torch.nonzero(mask, as_tuple=True)
        row, column = int(labels[col["position"]]) // 3, int(labels[col["position"]]) % 3
        assert int(ys.float().mean() // (32 / 3)) == row
        assert int(xs.float().mean() // (32 / 3)) == column
        # Background colour outside the mask (away from the anti-aliased edge).
        far = ~torch.nn.functional.max_pool2d(item["mask"].float()[None], 3, 1, 1)[0, 0].bool()
        bg = torch.tensor(BACKGROUND_RGB[CONCEPTS["background_colour"][labels[col["background_colour"]]]]) * 2 - 1
        assert torch.allclose(item["image"][:, far].mean(1), bg, atol=0.02)
        # Object colour: the brightest pixels inside the mask have it (textures only darken).
        obj = torch.tensor(OBJECT_RGB[CONCEPTS["object_colour"][labels[col["object_colour"]]]]) * 2 - 1
        inside = item["image"][:, mask]
        brightest = inside[:, inside.sum(0).argmax()]
        assert torch.allclose(brightest, obj, atol=0.15)
        areas[int(labels[col["size"]])].append(mask.sum().item())
    means = [np.mean(areas[s]) for s in range(3)]
    assert means[0] < means[1] < means[2], "small < medium < large"


def test_textures_darken_part_of_the_object_and_solid_does_not():
    data = ConceptShapes(size=200, image_size=64, seed=2)
    col = {name: i for i, name in enumerate(CONCEPT_NAMES)}
    for i in range(len(data)):
        item = data[i]
        interior = ~torch.nn.functional.max_pool2d((~item["mask"]).float()[None], 3, 1, 1)[0, 0].bool()
        if interior.sum() < 30:
            continue
        spread = item["image"][:, interior].std(dim=1).max()
        if CONCEPTS["texture"][item["labels"][col["texture"]]] == "solid":
            assert spread < 0.02
        else:
            assert spread > 0.1


def test_captions_name_every_concept_and_use_the_vocabulary():
    data = ConceptShapes(size=20, image_size=16)
    words = set(vocabulary())
    for i in range(20):
        text = data.caption(i)
        labels = data.label_dict(i)
        assert CONCEPTS["shape"][labels["shape"]] in text
        assert f"at the {CONCEPTS['position'][labels['position']]}" in text
        assert text.endswith(f"on a {CONCEPTS['background_colour'][labels['background_colour']]} background")
        assert set(text.split()) <= words
    assert caption({"size": 2, "object_colour": 0, "texture": 1, "shape": 0, "position": 0, "background_colour": 1}) == (
        "a large red striped circle at the top left on a navy background"
    )


@pytest.mark.parametrize("bad", [dict(image_size=20), dict(split="val"), dict(size=0)])
def test_bad_arguments_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ConceptShapes(**{"size": 4, "image_size": 16, **bad})


def test_the_loader_fetches_whole_batches_equal_to_stacked_samples():
    from torch.utils.data import default_collate

    from diffprobe.training import ConceptShapesDataModule

    data = ConceptShapesDataModule(image_size=16, train_size=40, heldout_size=10, batch_size=8)
    dataset = data.train_dataset()
    loader = data.train_dataloader()
    torch.manual_seed(0)
    batch = next(iter(loader))
    indices = batch["index"].tolist()
    assert len(set(indices)) == 8 and indices != sorted(indices), "shuffled, as before"
    stacked = default_collate([dataset[i] for i in indices])  # the per-sample path it replaces
    assert batch.keys() == stacked.keys()
    for key in ("image", "labels", "mask", "index"):
        assert batch[key].dtype == stacked[key].dtype and torch.equal(batch[key], stacked[key]), key
    assert batch["caption"] == stacked["caption"] == [caption(dataset.label_dict(i)) for i in indices]
    # The data set itself stays an ordinary one for a user's own DataLoader (and Subset, random_split).
    plain = next(iter(torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, [3, 1, 2]), batch_size=3)))
    assert torch.equal(plain["image"], torch.stack([dataset[i]["image"] for i in (3, 1, 2)]))
