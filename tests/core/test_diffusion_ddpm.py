import pytest
import torch

from diffprobe.diffusion import ddpm


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_the_true_target_recovers_x0(prediction_type, beta_schedule):
    scheduler = ddpm.build_scheduler(1000, beta_schedule, prediction_type)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 900])  # at t = 999 a cosine alpha_bar ~ 0 makes eps -> x0 ill-conditioned
    x_t = scheduler.add_noise(x0, noise, t)
    target = ddpm.training_target(scheduler, x0, noise, t)
    assert torch.allclose(ddpm.predict_x0(scheduler, target, x_t, t), x0, atol=1e-3)


def test_per_sample_loss_is_mse_per_sample():
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    b[1] *= 2
    assert torch.equal(ddpm.per_sample_loss(a, b), torch.tensor([1.0, 4.0]))


def test_buckets_cover_the_range_and_match_their_bounds():
    T, K = 1000, 10
    t = torch.arange(T)
    buckets = ddpm.timestep_buckets(t, T, K)
    assert buckets.min() == 0 and buckets.max() == K - 1
    for k, (first, last) in enumerate(ddpm.bucket_bounds(T, K)):
        assert (buckets[first : last + 1] == k).all()
    assert ddpm.bucket_bounds(T, K)[0] == (0, 99) and ddpm.bucket_bounds(T, K)[-1] == (900, 999)
    uneven = ddpm.bucket_bounds(100, 3)
    assert [b for b in ddpm.timestep_buckets(torch.tensor([u[0] for u in uneven]), 100, 3).tolist()] == [0, 1, 2]


def test_bad_scheduler_arguments_are_named():
    with pytest.raises(ValueError, match="beta_schedule"):
        ddpm.build_scheduler(beta_schedule="quadratic")
    with pytest.raises(ValueError, match="prediction_type"):
        ddpm.build_scheduler(prediction_type="noise")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predict_x0_matches_the_schedulers_own_estimate(prediction_type):
    scheduler = ddpm.build_scheduler(1000, "linear", prediction_type)
    scheduler = type(scheduler).from_config({**scheduler.config, "clip_sample": False})
    scheduler.set_timesteps(1000)
    x_t, output = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for t in (10, 500, 900):
        ours = ddpm.predict_x0(scheduler, output, x_t, torch.tensor([t, t]))
        theirs = scheduler.step(output, t, x_t).pred_original_sample
        assert torch.allclose(ours, theirs, atol=1e-4), t
