"""PredictionEvolution writes its tags; its measures behave on inputs with a known answer."""

import torch

from diffprobe.diffusion.metrics import frequency_band_errors, mean_colour_error
from diffprobe.training.callbacks import PredictionEvolution
from diffprobe.training.callbacks.prediction_evolution import concept_recovery
from helpers import make_module, make_trainer, read_events, shapes_data


def test_blur_costs_high_band_not_low_band():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 32, 32, generator=g)
    kernel = torch.ones(3, 1, 5, 5) / 25
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(image, (2, 2, 2, 2), mode="circular"), kernel, groups=3)
    low, high = frequency_band_errors(blurred, image, cutoff=0.1)
    assert (high > 0.5).all() and (low < 0.05).all()
    low, high = frequency_band_errors(image, image)
    assert torch.equal(low, torch.zeros(2)) and torch.equal(high, torch.zeros(2))
    # A colour cast changes only the mean, which has its own measure; the bands do not see it.
    shifted = image + 0.3
    low, high = frequency_band_errors(shifted, image)
    assert (low < 1e-6).all() and (high < 1e-6).all()
    assert torch.allclose(mean_colour_error(shifted, image), torch.full((2,), 0.3), atol=1e-5)
    # The same prediction scores the same in [0, 1] and in [-1, 1].
    a = frequency_band_errors(blurred, image)
    b = frequency_band_errors(blurred * 2 - 1, image * 2 - 1)
    assert torch.allclose(a[0], b[0], rtol=1e-3) and torch.allclose(a[1], b[1], rtol=1e-3)


def test_concept_recovery_scores_the_truth_perfectly_and_grey_badly():
    data = shapes_data(heldout_size=8).heldout_dataset()
    x0 = torch.stack([data[i]["image"] for i in range(8)])
    masks = torch.stack([data[i]["mask"] for i in range(8)])
    perfect = concept_recovery(x0, x0, masks)
    assert torch.allclose(perfect["object_colour_error"], torch.zeros(8)) and (perfect["mask_iou"] > 0.7).all()
    grey = concept_recovery(torch.zeros_like(x0), x0, masks)
    assert (grey["object_colour_error"] > 0.1).all()
    outside = (~masks).float()
    background = (x0 * outside).sum(dim=(2, 3), keepdim=True) / outside.sum(dim=(2, 3), keepdim=True)
    erased = concept_recovery(torch.where(masks, background.expand_as(x0), x0), x0, masks)  # object painted over
    assert (erased["mask_iou"] < 0.05).all()


def test_prediction_evolution_logs_grids_metrics_and_trajectory(tmp_path):
    data = shapes_data(heldout_size=8)
    callback = PredictionEvolution(every_n_steps=2, num_images=3, timesteps=[5, 50, 95], trajectory_steps=4, trajectory_every=2)
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[callback])
    module = make_module()
    trainer.fit(module, datamodule=data)
    tags = read_events(trainer.log_dir).Tags()
    assert {"pred/x0_hat", "pred/x_t", "pred/trajectory", "denoise/curves"} <= set(tags["images"])
    expected = {f"denoise/{m}/t{t:04d}" for m in ("mse", "psnr", "ssim", "mean_colour_error", "low_band_error", "high_band_error") for t in (5, 50, 95)}
    expected |= {f"recovery/{m}/t0050" for m in ("object_colour_error", "mask_iou")}
    assert expected <= set(tags["scalars"])
    noisy, predicted = callback.predictions(module)
    assert noisy.shape == predicted.shape == (3, 3, 3, 16, 16)
    module.train()
    callback.predictions(module)
    assert module.training, "train mode is restored after predicting"
