"""Attention recording: restores processors, leaves outputs identical, bounded, and correct."""

import pytest
import torch

from diffprobe.capture import attention_modules, record_attention
from helpers import make_module


def _inputs(module, conditional, batch=2):
    x, t = torch.randn(batch, 3, 16, 16), torch.tensor([5, 80][:batch])
    kwargs = {"encoder_hidden_states": module.caption_encoder.encode(["a small red solid circle at the top left on a navy background"] * batch)} if conditional else {}
    return x, t, kwargs


@pytest.mark.parametrize("conditional", [False, True])
def test_outputs_identical_processors_restored_probabilities_sum_to_one(conditional):
    module = make_module(conditional=conditional)
    unet = module.unet.eval()
    x, t, kwargs = _inputs(module, conditional)
    before = unet(x, t, **kwargs).sample
    processors = {n: m.processor for n, m in attention_modules(unet).items()}
    with torch.no_grad(), record_attention(unet) as maps:
        during = unet(x, t, **kwargs).sample
    assert torch.equal(before.detach(), during)
    assert {n: m.processor for n, m in attention_modules(unet).items()} == processors
    assert all("get_attention_scores" not in m.__dict__ for m in attention_modules(unet).values())
    assert set(maps) == set(processors) and all(len(v) == 1 for v in maps.values())
    for name, (probs,) in maps.items():
        assert torch.allclose(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-5), name
    if conditional:
        cross = [n for n, m in attention_modules(unet, "cross").items()]
        assert cross and all(maps[n][0].shape[-1] == 16 for n in cross), "cross-attention keys are the 16 caption tokens"


def test_bounded_modes_return_the_promised_shapes():
    unet = make_module().unet.eval()
    x, t, _ = _inputs(None, False)
    name = "down_blocks.1.attentions.0"  # 8x8 = 64 positions, 2 heads of 8 channels
    with torch.no_grad(), record_attention(unet, [name]) as mean, record_attention(unet, [name], keep_heads=True, query_points=torch.tensor([[0.1, 0.1], [0.9, 0.5]])) as some:
        unet(x, t)
    assert mean[name][0].shape == (2, 64, 64)
    heads = unet.get_submodule(name).heads
    assert some[name][0].shape == (2, heads, 2, 64)
    # the query subset is the same rows as the full map: (0.1, 0.1) -> cell (0, 0), (0.9, 0.5) -> row 4, col 7
    assert torch.allclose(some[name][0].mean(1), mean[name][0][:, [0, 4 * 8 + 7]], atol=1e-6)


def test_restored_on_exceptions_and_works_under_bf16_autocast():
    unet = make_module().unet.eval()
    processors = {n: m.processor for n, m in attention_modules(unet).items()}
    with pytest.raises(RuntimeError, match="boom"):
        with record_attention(unet):
            raise RuntimeError("boom")
    assert {n: m.processor for n, m in attention_modules(unet).items()} == processors
    x, t, _ = _inputs(None, False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = unet(x, t).sample
        with record_attention(unet) as maps:
            during = unet(x, t).sample
    assert torch.equal(before, during)
    assert all(v[0].dtype == torch.float32 and torch.isfinite(v[0]).all() for v in maps.values())


def test_bad_layer_and_query_point_are_named():
    unet = make_module().unet
    with pytest.raises(ValueError, match=r"no attention module\(s\) \['mid_block'\].*mid_block.attentions.0"):
        with record_attention(unet, ["mid_block"]):
            pass
    with pytest.raises(ValueError, match="outside the image"):
        with record_attention(unet, query_points=torch.tensor([[0.5, 1.2]])):
            pass


def test_recording_in_train_mode_with_dropout_leaves_the_random_stream_alone():
    from diffprobe.diffusion.unet import build_unet
    from helpers import TINY_UNET

    unet = build_unet(None, conditional=False, image_size=16, overrides={**TINY_UNET, "dropout": 0.5}).train()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 80])
    torch.manual_seed(7)
    before = unet(x, t).sample
    after_plain = torch.rand(3)
    torch.manual_seed(7)
    with record_attention(unet) as maps:
        during = unet(x, t).sample
    after_recording = torch.rand(3)
    assert torch.equal(before, during) and torch.equal(after_plain, after_recording)
    assert maps
