"""LIME baseline on the planted step model: it must find the planted region."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from diffprobe.explain.lime import lime_saliency, lime_weights, superpixels, weighted_ridge
from diffprobe.explain.model import from_parts
from diffprobe.explain.run import explain_step
from planted import SCHEDULER_CONFIG, PlantedStepUNet, planted_region

# Near-pixel superpixels: LIME's saliency is per superpixel, so to test *where* it puts its mass the
# superpixels must not straddle the planted region's border (with the coarse defaults, one segment
# can cover half the region and half the background).
FINE = dict(max_dist=4.0, ratio=0.5)


@pytest.fixture(scope="module")
def planted():
    model = from_parts(PlantedStepUNet(), SCHEDULER_CONFIG)
    return model, explain_step(model, num_inference_steps=20, step=15, seed=0)


def test_lime_puts_its_mass_in_the_planted_region(planted):
    model, step = planted
    region = planted_region(16)
    result = lime_saliency(model, step, num_samples=600, seed=0, **FINE)
    magnitude = result.saliency.abs()
    inside = magnitude[region].sum() / magnitude.sum()
    assert inside > 0.9, f"only {inside:.2f} of |saliency| lies in the planted region"
    # The superpixels with the largest |coefficient| lie wholly inside the region.
    for segment in result.coefficients.abs().argsort(descending=True)[:5].tolist():
        assert region[result.segments == segment].all()
    assert result.score > 0.99, "the planted response is linear in the on/off vector: the ridge fits it"


def test_similarity_response_also_finds_the_region(planted):
    model, step = planted
    region = planted_region(16)
    result = lime_saliency(model, step, num_samples=600, response="similarity", seed=0, **FINE)
    for segment in result.coefficients.abs().argsort(descending=True)[:3].tolist():
        assert region[result.segments == segment].all()
    assert result.response == "similarity"


def test_shapes_segments_and_top_k_with_default_quickshift(planted):
    model, step = planted
    result = lime_saliency(model, step, num_samples=64, seed=0, top_k=3)
    count = result.num_segments
    assert 5 <= count <= 60, f"default quickshift gave {count} segments on a 16x16 target"
    assert result.segments.shape == (16, 16) and result.segments.dtype == torch.long
    assert torch.equal(result.segments.unique(), torch.arange(count)), "every segment id covers some positions"
    assert torch.equal(result.image_segments, result.segments), "pixel space: display and x_t segments coincide"
    assert result.coefficients.shape == (count,) and torch.isfinite(result.coefficients).all()
    assert result.saliency.shape == (16, 16) and torch.isfinite(result.saliency).all()
    assert torch.equal(result.saliency, result.coefficients[result.segments])
    assert len(result.top_segments) == 3
    assert result.top_segments == result.coefficients.argsort(descending=True)[:3].tolist()
    assert all(isinstance(v, float) for v in (result.intercept, result.score))


def test_deterministic_for_a_seed(planted):
    model, step = planted
    first = lime_saliency(model, step, num_samples=64, batch_size=16, seed=3)
    again = lime_saliency(model, step, num_samples=64, batch_size=64, seed=3)
    other = lime_saliency(model, step, num_samples=64, seed=4)
    assert torch.equal(first.segments, again.segments)
    assert torch.allclose(first.coefficients, again.coefficients, atol=1e-6), "batching must not change the result"
    assert torch.equal(other.segments, first.segments), "the superpixels depend on the target only"
    assert not torch.allclose(other.coefficients, first.coefficients), "another seed draws other on/off samples"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_samples=1), "num_samples"),
        (dict(kernel_width=0.0), "kernel_width"),
        (dict(kernel_width=float("nan")), "kernel_width"),
        (dict(response="median"), "response"),
        (dict(batch_size=0), "batch_size"),
        (dict(alpha=0.0), "alpha"),
        (dict(kernel_size=0.5), "kernel_size"),
        (dict(ratio=1.5), "ratio"),
    ],
)
def test_bad_settings_raise_clear_errors(planted, kwargs, message):
    model, step = planted
    with pytest.raises(ValueError, match=message):
        lime_saliency(model, step, num_samples=kwargs.pop("num_samples", 8), **kwargs)


def test_model_is_left_unchanged(planted):
    model, step = planted
    unet = model.unet
    before = {name: p.requires_grad for name, p in unet.named_parameters()}
    training = {name: m.training for name, m in unet.named_modules()}
    weights = {name: p.clone() for name, p in unet.named_parameters()}
    lime_saliency(model, step, num_samples=16, seed=0)
    assert before == {name: p.requires_grad for name, p in unet.named_parameters()}
    assert training == {name: m.training for name, m in unet.named_modules()}
    assert all(torch.equal(weights[name], p) for name, p in unet.named_parameters())
    for module in unet.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks


def test_latent_like_decode_maps_segments_to_x_t_resolution(planted):
    model, step = planted
    # A "VAE" that doubles the size: segments are found at 32x32 and mapped to x_t's 16x16.
    upsampling = dataclasses.replace(model, decode_fn=lambda x: F.interpolate(x, scale_factor=2, mode="nearest"))
    result = lime_saliency(upsampling, step, num_samples=32, seed=0)
    assert result.image_segments.shape == (32, 32) and result.segments.shape == (16, 16)
    assert torch.equal(result.image_segments[::2, ::2], result.segments), "nearest downsampling keeps every other pixel"
    assert torch.equal(result.segments.unique(), torch.arange(result.num_segments))
    assert result.image_segments.min() >= -1 and result.image_segments.max() < result.num_segments


def test_segments_lost_at_low_resolution_are_dropped_and_renumbered():
    image = torch.full((3, 8, 8), -1.0)
    image[:, 1, 1] = 1.0  # a one-pixel segment on an odd position: 2x nearest downsampling skips it
    pixels = superpixels(image, (4, 4), kernel_size=1, max_dist=2, ratio=1.0)
    assert pixels.image_segments[1, 1] == -1, "the lost segment is marked -1 at display resolution"
    assert (pixels.image_segments >= 0).sum() == 63
    assert torch.equal(pixels.segments.unique(), torch.arange(pixels.num_segments))


def test_grayscale_targets_are_segmented_as_rgb():
    model = from_parts(PlantedStepUNet(in_channels=1), SCHEDULER_CONFIG)
    step = explain_step(model, num_inference_steps=20, step=15, seed=0)
    result = lime_saliency(model, step, num_samples=32, seed=0)
    assert result.segments.shape == (16, 16) and torch.isfinite(result.saliency).all()


def test_kernel_and_ridge_match_lime_and_scikit_learn():
    samples = torch.randint(0, 2, (50, 6), generator=torch.Generator().manual_seed(0))
    samples[0] = 1
    weights = lime_weights(samples, 0.25)
    assert weights[0] == 1.0, "the unperturbed sample is at distance 0"
    assert lime_weights(torch.zeros(1, 6, dtype=torch.long), 0.25)[0] == pytest.approx(torch.exp(torch.tensor(-16.0)).sqrt().item())
    targets = samples.double() @ torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0], dtype=torch.float64) + 0.7
    fit = weighted_ridge(samples, targets, weights, alpha=1.0)
    # Reference without scikit-learn: the same objective, sum_i w_i (y_i - b - x_i c)^2 + alpha |c|^2,
    # as an augmented least-squares system (sqrt(w_i) [1, x_i] rows, then sqrt(alpha) [0, e_j] rows).
    x, y, w = samples.double().numpy(), targets.numpy(), weights.double().numpy()
    design = np.vstack([np.sqrt(w)[:, None] * np.hstack([np.ones((len(x), 1)), x]), np.hstack([np.zeros((x.shape[1], 1)), np.eye(x.shape[1])])])
    solution = np.linalg.lstsq(design, np.concatenate([np.sqrt(w) * y, np.zeros(x.shape[1])]), rcond=None)[0]
    assert torch.allclose(fit.coefficients, torch.from_numpy(solution[1:]), atol=1e-8)
    assert fit.intercept == pytest.approx(float(solution[0]), abs=1e-8)
    predicted = solution[0] + x @ solution[1:]
    mean = (w * y).sum() / w.sum()
    assert fit.score == pytest.approx(1 - (w * (y - predicted) ** 2).sum() / (w * (y - mean) ** 2).sum(), abs=1e-8)
