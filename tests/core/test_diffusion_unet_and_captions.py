import pytest
import torch

from diffprobe.data.shapes import ConceptShapes, vocabulary
from diffprobe.diffusion.captions import CaptionEncoder, CaptionTokenizer
from diffprobe.diffusion.unet import build_unet, count_parameters


def test_ddpm_cifar10_preset_is_the_exact_google_architecture():
    unet = build_unet("ddpm-cifar10", conditional=False, image_size=32)
    assert count_parameters(unet) == 35_746_307
    assert unet.config.block_out_channels == (128, 256, 256, 256)


def test_tiny_presets_are_cpu_sized():
    assert 100_000 < count_parameters(build_unet("tiny", conditional=False, image_size=16)) < 1_000_000
    assert 100_000 < count_parameters(build_unet("tiny", conditional=True, image_size=16)) < 1_000_000


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown unconditional UNet preset 'huge'.*ddpm-cifar10"):
        build_unet("huge", conditional=False, image_size=32)


def test_image_size_must_fit_the_downsampling():
    with pytest.raises(ValueError, match="not divisible by 4"):
        build_unet("tiny", conditional=False, image_size=18)


def test_unknown_unet_config_key_is_named():
    with pytest.raises(ValueError, match="blocks_out"):
        build_unet("tiny", conditional=False, image_size=16, overrides={"blocks_out": 3})


def test_tokens_round_trip_by_name():
    data = ConceptShapes(size=5, image_size=16)
    tokenizer = CaptionTokenizer(vocabulary(), max_tokens=16)
    captions = [data.caption(i) for i in range(5)]
    ids = tokenizer.encode(captions)
    assert ids.shape == (5, 16)
    assert [" ".join(words) for words in tokenizer.decode(ids)] == captions
    assert (tokenizer.encode(["a zebra"])[0, 1] == 1).item(), "unknown words map to <unk>"


def test_too_long_caption_is_an_error_not_a_silent_cut():
    tokenizer = CaptionTokenizer(vocabulary(), max_tokens=4)
    with pytest.raises(ValueError, match="max_caption_tokens"):
        tokenizer.encode(["a large red striped circle"])


def test_caption_encoder_uses_position_and_saves(tmp_path):
    encoder = CaptionEncoder(vocabulary(), max_tokens=16, embedding_dim=8)
    red_object = encoder.encode(["a small red solid circle at the top left on a black background"])
    swapped = encoder.encode(["a small black solid circle at the top left on a red background"])
    assert not torch.allclose(red_object, swapped)
    encoder.save_pretrained(tmp_path)
    loaded = CaptionEncoder.from_pretrained(tmp_path)
    assert loaded.tokenizer.words == encoder.tokenizer.words
    assert torch.equal(loaded.encode(["a red circle"]), encoder.encode(["a red circle"]))
