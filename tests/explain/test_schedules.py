"""Exponential timestep schedules match the paper's definition and drive diffusers' sampler."""

import json

import pytest
import torch
from diffusers import DDPMScheduler

from diffprobe.commands.probe import probe_main
from diffprobe.diffusion import ddpm, timesteps
from diffprobe.explain.schedules import compare_schedules
from helpers import make_module, make_trainer


def _strictly_descending(values):
    return all(a > b for a, b in zip(values, values[1:]))


def test_early_schedule_is_packed_at_high_noise():
    early = timesteps.early_timesteps(1000, 30, 60)
    assert len(early) == 30 and early[0] == 999 and _strictly_descending(early)
    assert early[1] == 1000 - 107  # 1000 - floor(alpha ** 61), alpha = 1000 ** (1 / 90)
    assert early[-1] > 0, "the trailing 0 is dropped"
    gaps = [a - b for a, b in zip(early[1:], early[2:])]
    assert gaps[0] < gaps[-1], "dense at high t, sparse at low t"


def test_latter_schedule_is_packed_at_low_noise():
    latter = timesteps.latter_timesteps(1000, 30, 60)
    assert len(latter) == 30 and latter[0] == 999 and latter[-1] == 107 and _strictly_descending(latter)
    gaps = [a - b for a, b in zip(latter, latter[1:])]
    assert gaps[0] > gaps[-1], "dense at low t"
    # exact powers stay exact (alpha = 1000 ** (1/3)): floor(alpha ** 3) is 1000, clamped to T - 1
    assert timesteps.latter_timesteps(1000, 3, 0) == [999, 100, 10]
    assert timesteps.early_timesteps(1000, 3, 0) == [999, 990, 900]
    with pytest.raises(ValueError, match="repeats timesteps"):
        timesteps.latter_timesteps(1000, 50, 10)


def test_uniform_and_window_schedules():
    scheduler = ddpm.build_scheduler()
    assert timesteps.uniform_timesteps(scheduler, 10) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    window = timesteps.window_timesteps(1000, uniform_steps=5, window_steps=11, start=300, width=100)
    assert _strictly_descending(window) and {300, 310, 350, 400} <= set(window) and 999 in window and 0 in window
    with pytest.raises(ValueError, match="must lie inside"):
        timesteps.window_timesteps(1000, start=950, width=100)
    with pytest.raises(ValueError, match="schedule must be"):
        timesteps.schedule_timesteps("middle", scheduler)


def test_schedules_drive_the_sampler_from_the_same_initial_noise():
    module = make_module(num_train_timesteps=1000)
    unet = module.unet.eval()
    same = compare_schedules(unet, module.scheduler, [3, 4], {"a": [500, 100], "b": [500, 100]})
    assert torch.equal(same["a"], same["b"]) and not torch.equal(same["a"][0], same["a"][1])
    from diffprobe.diffusion import sampling

    def first_x_t(timesteps):
        generator = torch.Generator().manual_seed(3)
        return next(sampling.denoise(unet, DDPMScheduler.from_config(module.scheduler.config), batch_size=1, generator=generator, timesteps=timesteps)).x_t

    assert torch.equal(first_x_t(timesteps.early_timesteps(1000, 5, 5)), first_x_t(timesteps.latter_timesteps(1000, 5, 5)))
    scheduler = DDPMScheduler.from_config(module.scheduler.config)
    scheduler.set_timesteps(timesteps=timesteps.early_timesteps(1000, 6, 10))
    assert scheduler.timesteps.tolist() == timesteps.early_timesteps(1000, 6, 10)


def test_probe_schedules_command(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, every_n_steps=1)
    from helpers import shapes_data

    trainer.fit(make_module(num_train_timesteps=1000), datamodule=shapes_data())
    ckpt = tmp_path / "runs/test/version_0/checkpoints/last.ckpt"
    out = probe_main(["schedules", "--ckpt", str(ckpt), "--out", str(tmp_path / "s"), "--seeds", "[0, 1]", "--schedule.steps", "4", "--schedule.lam", "4"])
    info = json.loads((out / "schedules.json").read_text())
    assert set(info["timesteps"]) == {"uniform", "early", "latter"} and info["timesteps"]["early"][0] == 999
    assert torch.load(out / "early.pt", weights_only=True).shape == (2, 3, 16, 16) and (out / "schedules.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="not empty"):
        probe_main(["schedules", "--ckpt", str(ckpt), "--out", str(out)])


def test_schedule_settings_beyond_the_models_timesteps_are_refused_in_the_flags_words():
    from diffprobe.commands.common import CommandError
    from diffprobe.commands.schedules import TimestepSchedules
    from diffprobe.diffusion import ddpm

    config = dict(ddpm.build_scheduler(100).config)  # T = 100
    with pytest.raises(CommandError, match=r"--schedule.steps 200: this model has 100 training timesteps, so a schedule has at most 100 steps"):
        TimestepSchedules(steps=200).timesteps(config)
    with pytest.raises(CommandError, match=r"--schedule.window_start 400 \+ --schedule.window_width 200 reaches past the model's last timestep, 99"):
        TimestepSchedules(kinds=("window",)).timesteps(config)
    window = TimestepSchedules(kinds=("window",), window_start=40, window_width=20, window_steps=5, window_uniform_steps=3, steps=500)
    assert window.timesteps(config)["window"] == [99, 60, 55, 50, 45, 40, 0]  # steps is not the window's setting: not checked for it
