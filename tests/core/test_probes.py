"""Probe fitting, controls and significance, on planted signals and on the probe set."""

import math

import torch

from diffprobe.data.probe_set import ProbeSet
from diffprobe.diffusion.timesteps import default_timesteps
from diffprobe.probes import binomial_p_value, chance_level, class_mask, fit_probes, wilson_interval
from diffprobe.probes.fit import ridge_weights, standardize
from diffprobe.probes.pipeline import probe_features
from helpers import shapes_data


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


def test_dual_ridge_equals_primal_on_the_same_data():
    features, labels = planted(n=60, d=80)
    train, test = standardize(features[:, :40], features[:, 40:])
    targets = torch.nn.functional.one_hot(labels[:40], 3).flatten(1).float()
    targets = targets - targets.mean(0)
    primal = ridge_weights(train, targets, 0.1, dual=False)  # (P, D, K * C) = (4, 80, 6)
    dual = ridge_weights(train, targets, 0.1, dual=True)
    assert primal.shape == dual.shape == (4, 80, 6)
    assert (primal - dual).abs().max() < 2e-5, "the push-through identity: both solves give one ridge"
    assert (test @ primal - test @ dual).abs().max() < 2e-5
    assert torch.equal(ridge_weights(train, targets, 0.1), dual), "80 features > 40 examples: the dual is chosen"
    fit = fit_probes(features[:, :40], labels[:40], features[:, 40:], labels[40:], [3, 3], method="ridge")
    assert (fit.accuracy[:, 0] > 0.8).all()


def test_class_mask_marks_each_concepts_own_classes():
    assert class_mask([2, 4, 1]).tolist() == [[True, True, False, False], [True, True, True, True], [True, False, False, False]]


def test_chance_p_values_and_intervals_behave():
    test = torch.tensor([[0], [1], [0], [0]])
    assert torch.allclose(chance_level(test, [2]), torch.tensor([0.75]))
    n = 100
    p = binomial_p_value(torch.tensor([50, 60, 75, 100]), n, torch.tensor(0.5))
    assert 0.4 < p[0] < 0.6 and p[1] < 0.05 and p[2] < 1e-6 and p[3] < 1e-29
    assert abs(float(binomial_p_value(torch.tensor(0), n, torch.tensor(0.3))) - 1.0) < 1e-6
    low, high = wilson_interval(torch.tensor([50, 0, 100]), n)
    assert low[0] < 0.5 < high[0] and low[1] == 0 and high[2] > 0.999 and high[1] < 0.05


def test_chance_is_the_best_constant_answer_on_the_test_split():
    # 10 classes; class 9 is the training split's majority but only 7% of the test split, and
    # class 0 is the test split's largest (11%). Scoring the training majority on the test split
    # would put chance at 0.07, below 1/10, and a probe always answering 0 would look significant.
    test = torch.cat([torch.zeros(110), torch.arange(1, 9).repeat_interleave(102), torch.full((74,), 9)]).long()
    train = torch.cat([torch.arange(10), torch.full((50,), 9)]).long()
    assert torch.bincount(train).argmax() == 9 and (test == 9).float().mean() < 0.1
    n = len(test)
    chance = chance_level(test[:, None], [10])
    assert torch.allclose(chance, torch.tensor([0.11]))
    constant = torch.stack([(test == c).sum() for c in range(10)])  # correct answers of "always c"
    assert (binomial_p_value(constant, n, chance) > 0.05).all(), "no constant answer beats chance"
    assert binomial_p_value(constant[0], n, torch.tensor(0.074)) < 1e-3, "the training-majority chance would call it significant"


def test_probe_table_tests_against_the_test_splits_largest_class():
    data = shapes_data(heldout_size=90)
    probe_set = ProbeSet.from_dataset(data.heldout_dataset(), data.concepts, size=90, timesteps=[0, 50, 99], seed=3)
    noise = {"block": torch.randn(3, 90, 16, generator=torch.Generator().manual_seed(0))}  # (T, N, D), no concept in it
    table = probe_features(noise, probe_set, method="ridge")
    _, test = probe_set.split()
    labels = probe_set.labels[test]
    largest = [torch.bincount(labels[:, k]).max() / len(test) for k in range(labels.shape[1])]
    assert torch.allclose(table.chance, torch.stack(largest).float())
    assert not table.significant.any(), "features without a concept are never above chance"


def test_binomial_tail_matches_the_summed_pmf():
    # the exact tail summed term by term (the former hand-written test) on a small case
    n, p = 20, 0.3
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    correct = torch.tensor([0, 3, 6, 10, 15, 20])
    expected = torch.tensor([sum(pmf[int(c) :]) for c in correct])
    assert torch.allclose(binomial_p_value(correct, n, torch.tensor(p)), expected.double(), rtol=1e-5)
    # float64 through: a tail far below float32's smallest number stays tiny, not 0
    tiny = binomial_p_value(torch.tensor([300]), 300, torch.tensor(0.1))
    assert tiny.dtype == torch.float64 and 0 < float(tiny) < 1e-290


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


def test_features_stream_across_timesteps_and_equal_one_forward_per_t():
    from contextlib import contextmanager

    from diffprobe.capture import capture_features, default_layers
    from diffprobe.probes.pipeline import extract_features
    from helpers import make_module

    torch.manual_seed(0)
    module = make_module()
    unet, scheduler = module.unet.eval(), module.scheduler
    data = shapes_data(heldout_size=16)
    probes = ProbeSet.from_dataset(data.heldout_dataset(), data.concepts, size=10, timesteps=[0, 30, 60, 99], seed=1)
    layers = default_layers(unet)
    entered = []

    @contextmanager
    def precision():  # stands in for a training run's autocast: it must wrap every UNet call
        entered.append(len(entered))
        yield

    # batch 7 over 4 x 10 rows: 6 batches, 5 of them spanning two timesteps.
    streamed = extract_features(unet, scheduler, probes, layers, batch_size=7, precision=precision)
    assert len(entered) == 6
    with torch.no_grad():
        for j, t in enumerate(probes.timesteps.tolist()):
            timesteps = torch.full((10,), t)
            with capture_features(unet, layers) as reference:
                unet(scheduler.add_noise(probes.images, probes.noise(j), timesteps), timesteps)
            for name in layers:
                assert streamed[name].shape == (4, 10, reference[name].shape[1])
                torch.testing.assert_close(streamed[name][j], reference[name], atol=1e-5, rtol=1e-5)
    only = extract_features(unet, scheduler, probes, layers, batch_size=64, only=[60])
    torch.testing.assert_close(only[layers[0]][0], streamed[layers[0]][2], atol=1e-5, rtol=1e-5)


def test_a_probe_set_keeps_its_tensors_on_an_accelerator_and_not_on_the_host():
    data = shapes_data(heldout_size=16)
    probes = ProbeSet.from_dataset(data.heldout_dataset(), data.concepts, size=12, timesteps=[0, 50], seed=1)
    assert probes.noise_on(1, "meta") is probes.noise_on(1, "meta") and probes.noise_on(1, "meta").device.type == "meta"
    assert probes.images_on("meta") is probes.images_on("meta")
    assert probes.noise_on(0, "cpu") is not probes.noise_on(0, "cpu") and torch.equal(probes.noise_on(0, "cpu"), probes.noise(0))
    assert not any(device.type == "cpu" for device, _ in probes._on_device)
    probes.release()
    assert not probes._on_device
