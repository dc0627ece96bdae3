"""Observation restores the UNet: hooks removed, outputs bit-identical, no gradient leaks."""

import pytest
import torch

from diffprobe.capture import capture_features, default_layers, eager, pool_features
from helpers import make_module


def _hook_count(module) -> int:
    return sum(len(m._forward_hooks) for m in module.modules())


@pytest.mark.parametrize("conditional", [False, True])
def test_capture_leaves_outputs_identical_and_removes_hooks(conditional):
    module = make_module(conditional=conditional)
    unet = module.unet.eval()
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([1, 50, 99])
    kwargs = {"encoder_hidden_states": module.caption_encoder.unconditional(3)} if conditional else {}
    before = unet(x, t, **kwargs).sample
    hooks = _hook_count(unet)
    with capture_features(unet) as features:
        during = unet(x, t, **kwargs).sample
    assert torch.equal(before, during)
    assert _hook_count(unet) == hooks
    assert set(features) == set(default_layers(unet)) == {"down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"}
    assert features["down_blocks.1"].shape == (3, 16) and features["up_blocks.1"].shape == (3, 8)


def test_hooks_are_removed_on_an_exception():
    unet = make_module().unet
    with pytest.raises(RuntimeError, match="boom"):
        with capture_features(unet, ["mid_block"]):
            raise RuntimeError("boom")
    assert _hook_count(unet) == 0


def test_captured_features_carry_no_gradient_into_the_unet():
    unet = make_module().unet
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 70])

    def grads(with_probe: bool):
        unet.zero_grad()
        with capture_features(unet, ["mid_block"]) as features:
            loss = unet(x, t).sample.square().mean()
        if with_probe:
            assert not features["mid_block"].requires_grad
            loss = loss + 0.0 * features["mid_block"].sum()
        loss.backward()
        return [p.grad.clone() for p in unet.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(grads(False), grads(True)))


def test_wrong_layer_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"no module\(s\) \['middle'\].*mid_block"):
        with capture_features(make_module().unet, ["middle"]):
            pass


def test_spatial_pooling_shapes_and_bad_pool():
    hidden = torch.randn(2, 5, 8, 8)
    assert pool_features(hidden, "mean").shape == (2, 5)
    assert pool_features(hidden, "grid2").shape == (2, 20)
    assert torch.allclose(pool_features(hidden, "grid2").view(2, 5, 4).mean(-1), pool_features(hidden, "mean"), atol=1e-6)
    with pytest.raises(ValueError, match="pool must be"):
        with capture_features(make_module().unet, ["mid_block"], pool="max"):
            pass


def test_eager_runs_a_module_compiled_in_place_with_its_hooks_and_restores_it():
    # Fails loudly when torch stops keeping an in-place compile where capture.eager looks for it.
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    module.compile(backend="eager")
    compiled = getattr(module, "_compiled_call_impl", None)
    assert compiled is not None, "nn.Module.compile no longer stores _compiled_call_impl: update diffprobe.capture.eager"
    seen = []
    handle = module[0].register_forward_hook(lambda m, args, out: seen.append(out.shape))
    x = torch.randn(2, 4)
    with eager(module):
        assert torch.equal(module(x), module.forward(x))
    handle.remove()
    assert seen, "the hook fired in the eager forward"
    assert module._compiled_call_impl is compiled


def test_eager_restores_the_compiled_wrapper():
    unet = make_module().unet
    marker = object()
    unet._compiled_call_impl = marker
    with eager(unet):
        assert unet._compiled_call_impl is None
    assert unet._compiled_call_impl is marker
