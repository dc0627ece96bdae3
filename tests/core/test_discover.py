"""Label-free discovery's core: the TopK SAE recovers a planted dictionary, AUROC scores planted
and noise features right, and features are followed across dictionaries by decoder cosine."""

import pytest
import torch

from diffprobe.discover.dictionaries import birth_step, t_span
from diffprobe.discover.sae import SAESettings, TopKSAE, fit_sae, sae_stats
from diffprobe.discover.score import auroc, best_features, mask_iou, match


def planted_samples(directions: torch.Tensor, count: int, active: int, seed: int = 0) -> torch.Tensor:
    """Each sample: ``active`` of the unit ``directions`` (P, D) with positive weights."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.rand(count, len(directions), generator=generator).argsort(dim=1)[:, :active]
    weights = torch.zeros(count, len(directions)).scatter_(1, chosen, 0.5 + torch.rand(count, active, generator=generator))
    return weights @ directions


def test_a_topk_sae_recovers_a_planted_sparse_dictionary():
    generator = torch.Generator().manual_seed(1)
    planted = torch.nn.functional.normalize(torch.randn(24, 16, generator=generator), dim=1)
    samples = planted_samples(planted, 6000, active=3)
    fitted = fit_sae(samples, SAESettings(expansion=4, k=3, steps=1500, batch_size=512, learning_rate=3e-3))
    stats = sae_stats(fitted, samples)
    # Directions live in the centred, scaled input space: compare directions, which scaling keeps.
    cosine = (planted @ torch.nn.functional.normalize(fitted.sae.decoder.detach(), dim=0)).max(dim=1).values
    assert float((cosine >= 0.9).float().mean()) >= 0.75, cosine
    assert stats.explained_variance > 0.8 and stats.mean_l0 <= 3.0 and 0.0 <= stats.dead_share < 1.0


def test_topk_keeps_k_codes_and_unit_decoder_columns():
    sae = TopKSAE(8, 32, 5, torch.Generator().manual_seed(0))
    codes = sae.encode(torch.randn(10, 8))
    assert int((codes > 0).sum(dim=1).max()) <= 5 and torch.allclose(sae.decoder.norm(dim=0), torch.ones(32))
    with pytest.raises(ValueError, match=r"k must lie in \[1, 32\]"):
        TopKSAE(8, 32, 33)
    with pytest.raises(ValueError, match="expansion must be >= 1"):
        SAESettings(expansion=0)


def test_auroc_is_one_on_a_planted_feature_and_about_half_on_noise():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    planted = (labels == 2).float() + 0.01 * torch.rand(400, generator=generator)
    noise = torch.rand(400, generator=generator)
    scores = auroc(torch.stack([planted, noise, torch.zeros(400)], dim=1), labels == 2)
    assert scores[0] == 1.0 and abs(float(scores[1]) - 0.5) < 0.1 and scores[2] == 0.5  # ties score half
    # Against the definition: the share of (positive, negative) pairs ordered right, ties half.
    positives, negatives = noise[labels == 2], noise[labels != 2]
    pairs = (positives[:, None] > negatives[None]).float() + 0.5 * (positives[:, None] == negatives[None]).float()
    assert float(scores[1]) == pytest.approx(float(pairs.mean()), abs=1e-6)
    found = best_features(torch.stack([noise, planted], dim=1), labels[:, None], {"colour": ("a", "b", "c", "d")})
    assert [(f.value, f.feature) for f in found][2] == ("c", 1) and found[2].auroc == 1.0


def test_mask_iou_pools_where_a_feature_fires_over_images():
    masks = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    masks[:, :, :2, :2] = True
    fires_on_object = torch.zeros(2, 2, 2)
    fires_on_object[:, 0, 0] = 1.0  # the top-left cell of a 2x2 map covers the object's 2x2 pixels
    assert mask_iou(fires_on_object, masks) == 1.0
    assert mask_iou(1.0 - fires_on_object, masks) == 0.0


def test_features_are_followed_through_a_permuted_copy_and_born_where_the_chain_breaks():
    generator = torch.Generator().manual_seed(0)
    first = torch.nn.functional.normalize(torch.randn(6, 16, generator=generator), dim=1)
    permutation = torch.tensor([3, 0, 5, 1, 2, 4])
    second = first[permutation]
    indices, cosine = match(second, first)
    assert torch.equal(indices, permutation) and torch.allclose(cosine, torch.ones(6))
    fresh = torch.nn.functional.normalize(torch.randn(6, 16, generator=generator), dim=1)
    third = second.clone()
    third[4] = fresh[4]  # feature 4 is new at step 300; the others go back to step 100
    history = [(100, first), (200, second), (300, third)]
    assert birth_step(0, history) == 100 and birth_step(4, history) == 300
    assert t_span(0, 50, {10: first, 50: second, 90: fresh}) == (10, 50)
