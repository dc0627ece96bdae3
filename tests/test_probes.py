"""Probe fitting, controls and significance, on planted signals and on the probe set."""

import torch

from conftest import shapes_data
from diffprobe.data.probe_set import ProbeSet, default_timesteps
from diffprobe.probes import binomial_p_value, fit_probes, majority_chance, wilson_interval


def planted(n=300, d=12, classes=3, p=4, seed=0):
    """Features where concept 0 is linearly decodable and concept 1 is pure noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([torch.randint(0, classes, (n,), generator=g), torch.randint(0, classes, (n,), generator=g)], 1)
    directions = torch.randn(classes, d, generator=g) * 3
    features = torch.randn(p, n, d, generator=g) + directions[labels[:, 0]]
    return features, labels


def test_both_methods_recover_a_planted_signal_and_stay_at_chance_on_noise():
    features, labels = planted()
    for method in ("logistic", "ridge"):
        fit = fit_probes(features[:, :200], labels[:200], features[:, 200:], labels[200:], [3, 3], method=method)
        assert fit.accuracy.shape == (4, 2) and fit.n_test == 100
        assert (fit.accuracy[:, 0] > 0.95).all(), method
        assert (fit.accuracy[:, 1] < 0.5).all(), method  # chance is 1/3


def test_dual_ridge_equals_primal_when_features_outnumber_examples():
    features, labels = planted(n=60, d=80)
    a = fit_probes(features[:, :40], labels[:40], features[:, 40:], labels[40:], [3, 3], method="ridge")
    b = fit_probes(features[:, :40, :39], labels[:40], features[:, 40:, :39], labels[40:], [3, 3], method="ridge")
    assert a.correct.shape == b.correct.shape  # both paths run; the planted concept is found by both
    assert (a.accuracy[:, 0] > 0.8).all() and (b.accuracy[:, 0] > 0.8).all()


def test_chance_p_values_and_intervals_behave():
    train = torch.tensor([[0], [0], [0], [1]])
    test = torch.tensor([[0], [1], [0], [0]])
    assert torch.allclose(majority_chance(train, test, [2]), torch.tensor([0.75]))
    n = 100
    p = binomial_p_value(torch.tensor([50, 60, 75, 100]), n, torch.tensor(0.5))
    assert 0.4 < p[0] < 0.6 and p[1] < 0.05 and p[2] < 1e-6 and p[3] < 1e-29
    assert abs(float(binomial_p_value(torch.tensor(0), n, torch.tensor(0.3))) - 1.0) < 1e-6
    low, high = wilson_interval(torch.tensor([50, 0, 100]), n)
    assert low[0] < 0.5 < high[0] and low[1] == 0 and high[2] > 0.999 and high[1] < 0.05


def test_probe_set_is_deterministic_saved_and_controlled(tmp_path):
    data = shapes_data(heldout_size=64)
    make = lambda: ProbeSet.from_dataset(data.heldout_dataset(), data.concepts, size=60, timesteps=default_timesteps(100), seed=3)  # noqa: E731
    a, b = make(), make()
    assert torch.equal(a.images, b.images) and torch.equal(a.control_labels, b.control_labels)
    assert torch.equal(a.noise(2), b.noise(2)) and not torch.equal(a.noise(2), a.noise(3))
    assert a.timesteps.tolist() == [0, 1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 99]
    # control labels keep each concept's class frequencies but not the images' labels
    for k in range(a.labels.shape[1]):
        assert torch.equal(a.labels[:, k].sort().values, a.control_labels[:, k].sort().values)
    assert (a.labels != a.control_labels).float().mean() > 0.3
    train, test = a.split()
    assert len(set(train.tolist()) & set(test.tolist())) == 0 and len(train) + len(test) == 60
    loaded = ProbeSet.load(a.save(tmp_path / "probe_set.pt"))
    assert torch.equal(loaded.images, a.images) and loaded.concepts == a.concepts and torch.equal(loaded.noise(4), a.noise(4))
    assert loaded.masks is not None and loaded.captions[0] == data.heldout_dataset().caption(0)
