"""Causal timing on planted models where the answer is known: a prompt switch must step at the
t where the stand-in stops reading the caption; steering must work along the direction the
stand-in reads and only in the window where it reads it, and a random direction must not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from diffprobe.diffusion.ddpm import sampling_scheduler
from diffprobe.explain.model import ExplainModel, Prompt
from diffprobe.intervene.branching import Branch, branched_finals
from diffprobe.intervene.steer import SteerSetting, probe_direction, steered_images
from diffprobe.intervene.switch import CaptionPairs, insertion_curve, lock_in_time, switched_images

PALETTE = torch.tensor([[-0.9, -0.9, -0.9], [0.9, -0.9, -0.9], [-0.9, 0.9, -0.9], [-0.9, -0.9, 0.9]])  # 4 "background colours"
GREY = torch.zeros(1, 3)  # nothing decided yet
SCHEDULE = DDPMScheduler(num_train_timesteps=1000).config
T_STAR = 500  # the stand-ins decide at the first step below it (t = 480)
TIMESTEPS = list(range(980, -1, -20))  # 50 uniform DDPM steps


class SolidColourUNet(nn.Module):
    """Predicts the exact noise for x0 = one solid colour (64x64 images, so x_t's mean is clear).

    At t >= T_STAR it predicts grey: the caption is not read. Below it, while x_t still shows grey,
    it decides: the caption's colour (encoder_hidden_states[:, 0, 0]) or, unconditionally, colour 1
    if ``mid_block``'s pooled output projects above 0.5 on ``direction`` (else colour 0). Once x_t
    shows a colour it keeps it. So the decision is made at the first step below T_STAR, t = 480."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.config = SimpleNamespace(sample_size=64, in_channels=3)
        self.alphas_cumprod = DDPMScheduler.from_config(SCHEDULE).alphas_cumprod
        self.mid_block = nn.Conv2d(3, channels, 1)  # outputs zeros: only steering moves it
        nn.init.zeros_(self.mid_block.weight)
        nn.init.zeros_(self.mid_block.bias)
        self.direction = torch.zeros(channels)
        self.direction[0] = 1.0

    def forward(self, x, t, encoder_hidden_states=None):
        t = int(t)
        a = self.alphas_cumprod[t]
        pooled = self.mid_block(x).mean((2, 3))  # always run: a steering hook may sit on it
        if t >= T_STAR:
            x0 = GREY.expand(x.shape[0], -1)
        else:
            mean = x.mean((2, 3)) / a.sqrt()
            # A colour shows once x_t's mean leaves grey (one DDPM step moves it ~0.3 of the way;
            # the noise's mean over 64x64 pixels stays under ~0.1): the nearest colour by angle.
            shown = torch.where(mean.norm(dim=1) > 0.15, torch.nn.functional.cosine_similarity(mean[:, None], PALETTE[None], dim=2).argmax(1), -1)
            if encoder_hidden_states is not None:
                decided = encoder_hidden_states[:, 0, 0].long()
            else:
                decided = (pooled @ self.direction > 0.5).long()
            x0 = PALETTE[torch.where(shown >= 0, shown, decided)]
        x0 = x0[:, :, None, None].expand_as(x)
        return SimpleNamespace(sample=(x - a.sqrt() * x0) / (1 - a).sqrt())


def colour_reader(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1): the nearest palette colour (the planted concept's reader)."""
    return torch.cdist(images.mean((2, 3)), PALETTE).argmin(1)[:, None]


def planted_model(conditional: bool) -> ExplainModel:
    unet = SolidColourUNet()

    def encode(text: str) -> Prompt:
        return Prompt(text, torch.full((1, 1, 1), float(int(text))), torch.full((1, 1, 1), -1.0), [text], [0])

    return ExplainModel(unet=unet, scheduler_config=dict(SCHEDULE), encode_prompt_fn=encode if conditional else None, kind="planted")


def test_prompt_switch_steps_where_the_model_stops_reading_the_caption():
    model = planted_model(conditional=True)
    first = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    second = (first + torch.tensor([1, 2, 3, 1, 2, 3, 1, 2])) % 4
    pairs = CaptionPairs("colour", [str(int(v)) for v in first], [str(int(v)) for v in second], first[:, None], second[:, None])
    switch_times = [0, 100, 300, 470, 490, 700, 999]
    images = switched_images(model, pairs, switch_times, TIMESTEPS, seed=3, batch_size=3)  # batches do not change images
    assert images.shape == (len(switch_times), 8, 3, 64, 64)
    curve = insertion_curve(pairs, [colour_reader(x) for x in images], switch_times, ["colour"])
    # The colour is decided at t = 480 by the caption of that step: B's when t_s > 480.
    assert curve.rate == [0, 0, 0, 0, 1, 1, 1]
    lock = curve.lock_in()
    assert lock.t_lock == pytest.approx(480) and lock.inserted
    assert lock.low <= lock.t_lock <= lock.high
    # Same seed, same noise: never switched gives A's colour; switched from the start B's.
    assert torch.equal(colour_reader(images[0])[:, 0], first) and torch.equal(colour_reader(images[-1])[:, 0], second)


def test_branches_draw_the_trunks_noise():
    """A branch that changes nothing ends exactly where the trunk ends: it drew the same noise."""
    unet = SolidColourUNet()
    scheduler = sampling_scheduler(SCHEDULE, "ddpm", TIMESTEPS)

    def output(x, t, index):
        return unet(x, t, torch.zeros(x.shape[0], 1, 1)).sample

    trunk, finals = branched_finals(output, [Branch(10, output), Branch(40, output)], scheduler, shape=(3, 64, 64), seeds=[5, 6], device=torch.device("cpu"))
    assert all(torch.equal(trunk, final) for final in finals)
    alone, _ = branched_finals(output, [], scheduler, shape=(3, 64, 64), seeds=[6], device=torch.device("cpu"))
    assert torch.equal(alone[0], trunk[1])  # an image does not depend on its batch


def test_lock_in_time_interpolates_and_says_when_there_is_none():
    assert lock_in_time([0, 100, 200], [0.0, 0.25, 0.75]) == pytest.approx(150.0)
    assert lock_in_time([0, 100, 200], [0.0, 0.6, 0.4]) == pytest.approx(83.333, abs=0.01)  # the last rise through 0.5
    assert lock_in_time([0, 100, 200], [0.0, 0.2, 0.4]) is None  # never inserted
    assert lock_in_time([0, 100, 200], [0.5, 0.6, 1.0]) is None  # decided below the grid
    with pytest.raises(ValueError, match="ascending"):
        lock_in_time([100, 0], [0.0, 1.0])


def _direction_fit(unet: SolidColourUNet):
    """A probe on planted features: class "pushed" lies 1.0 further along the model's direction."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(1000) % 2
    features = torch.randn(1000, unet.direction.numel(), generator=generator) * 0.2 + labels[:, None] * unet.direction
    return probe_direction(features, labels, ["plain", "pushed"], layer="mid_block", t=700, concept="colour", target="pushed", source="plain",
                           train=torch.arange(800), test=torch.arange(800, 1000))  # fmt: skip


def test_steering_along_the_probe_flips_the_concept_and_a_random_direction_does_not():
    model = planted_model(conditional=False)
    direction = _direction_fit(model.unet)
    assert direction.probe_accuracy > 0.95
    assert torch.nn.functional.cosine_similarity(direction.unit, model.unet.direction, dim=0) > 0.9
    settings = [SteerSetting(kind, alpha, start, end) for kind in ("probe", "random") for alpha in (0.0, 0.5, 4.0) for start, end in ((500, 1000), (0, 500))]
    plain, steered = steered_images(model, direction, settings, TIMESTEPS, num_images=6, seed=0, batch_size=4)
    success = {s: float((colour_reader(x)[:, 0] == 1).float().mean()) for s, x in zip(settings, steered)}
    assert (colour_reader(plain)[:, 0] == 0).all()
    assert success[SteerSetting("probe", 0.0, 500, 1000)] == 0.0
    assert success[SteerSetting("probe", 0.5, 0, 500)] == 0.0
    assert success[SteerSetting("probe", 4.0, 0, 500)] == 1.0  # rises with alpha ...
    assert success[SteerSetting("probe", 4.0, 500, 1000)] == 0.0  # ... only where the model reads the feature
    assert all(success[SteerSetting("random", a, w0, w1)] == 0.0 for a in (0.5, 4.0) for w0, w1 in ((500, 1000), (0, 500)))


def test_probe_direction_refuses_unknown_values():
    with pytest.raises(ValueError, match="not a value"):
        probe_direction(torch.zeros(4, 8), torch.tensor([0, 1, 0, 1]), ["a", "b"], layer="mid_block", t=0, concept="colour", target="c")
    with pytest.raises(ValueError, match="both"):
        probe_direction(torch.zeros(4, 8), torch.tensor([0, 1, 0, 1]), ["a", "b"], layer="mid_block", t=0, concept="colour", target="a", source="a")


@pytest.mark.parametrize("pool", ["mean", "grid2", "grid4"])
def test_a_shift_in_pooled_feature_space_moves_the_pooled_features_by_exactly_that(pool):
    from diffprobe.capture import pool_features
    from diffprobe.intervene.steer import spatial_shift

    hidden = torch.randn(3, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    shift = torch.randn(pool_features(hidden, pool).shape[1], generator=torch.Generator().manual_seed(1))
    moved = pool_features(hidden + spatial_shift(shift, pool, hidden), pool)
    assert torch.allclose(moved - pool_features(hidden, pool), shift.expand(3, -1), atol=1e-5)
