"""PredictionEvolution: what the model predicts at each timestep, on fixed inputs, over training.

Every N steps, with fixed images and fixed noise (the run's probe set when ProbeMonitor saved one):
- ``pred/x0_hat`` and ``pred/x_t``: grids with one row per t and one column per image, so the step
  slider plays how the one-shot prediction at each timestep improves;
- ``pred/trajectory``: a reverse process from fixed noise (x_t and x0_hat every k steps);
- ``denoise/<metric>/t<tttt>`` for mse, psnr, ssim (torchmetrics) and the relative error in the low
  and high frequency bands, plus one curve figure per evaluation (``denoise/curves``);
- ConceptShapes (images with object masks): ``recovery/object_colour_error/t<tttt>`` (mean colour
  inside the true mask vs the truth) and ``recovery/mask_iou/t<tttt>`` (object mask of x0_hat).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import cast

import lightning.pytorch as pl
import torch
from einops import rearrange
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from typing_extensions import override

from diffprobe import interrupt
from diffprobe.capture import eval_mode
from diffprobe.choices import Weights
from diffprobe.data.probe_set import fixed_examples
from diffprobe.diffusion import ddpm, sampling
from diffprobe.diffusion.metrics import frequency_band_errors, mean_colour_error
from diffprobe.diffusion.timesteps import check_timesteps, scaled_timesteps
from diffprobe.report import tb, viz
from diffprobe.training.callbacks.periodic import TimestepGridObserver

DEFAULT_T_1000 = (10, 50, 100, 200, 400, 600, 800, 950)


def concept_recovery(x0_hat: torch.Tensor, x0: torch.Tensor, masks: torch.Tensor, threshold: float = 0.3) -> dict[str, torch.Tensor]:
    """Per-sample (B,) object-colour error inside the true mask, and IoU of the object mask read
    off x0_hat (pixels farther than ``threshold`` from the true background colour)."""
    inside = masks.float()
    area = inside.sum(dim=(1, 2, 3)).clamp_min(1)
    colour_true = (x0 * inside).sum(dim=(2, 3)) / area.view(-1, 1)
    colour_hat = (x0_hat * inside).sum(dim=(2, 3)) / area.view(-1, 1)
    outside = 1 - inside
    background = (x0 * outside).sum(dim=(2, 3)) / outside.sum(dim=(1, 2, 3)).clamp_min(1).view(-1, 1)
    predicted = (x0_hat - background.view(*background.shape, 1, 1)).abs().amax(1, keepdim=True) > threshold
    intersection = (predicted & masks).sum(dim=(1, 2, 3)).float()
    union = (predicted | masks).sum(dim=(1, 2, 3)).float().clamp_min(1)
    return {"object_colour_error": (colour_hat - colour_true).abs().mean(1), "mask_iou": intersection / union}


class PredictionEvolution(TimestepGridObserver):
    """Args:
    every_n_steps: evaluate after every this many optimizer steps (and at the start and end).
    num_images: fixed probe images shown (columns).
    timesteps: the t of each row (default 8 values from 10 to 950, scaled to T).
    trajectory_steps: sampling steps of the trajectory (DDPM, EMA weights); 0 turns it off.
    trajectory_every: keep every k-th step of the trajectory.
    weights: predict with the ``ema`` or the ``raw`` weights.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_images: int = 8,
        timesteps: list[int] | None = None,
        trajectory_steps: int = 50,
        trajectory_every: int = 10,
        weights: Weights = "ema",
    ):
        super().__init__(every_n_steps)
        if num_images < 1 or trajectory_every < 1 or trajectory_steps < 0:
            raise ValueError("num_images and trajectory_every must be >= 1 and trajectory_steps >= 0")
        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
        self.num_images, self.timesteps = num_images, timesteps
        self.trajectory_steps, self.trajectory_every, self.weights = trajectory_steps, trajectory_every, weights
        self.images: torch.Tensor | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit" or self.images is not None:
            return
        T = pl_module.num_train_timesteps
        self.timesteps = self.timesteps or scaled_timesteps(DEFAULT_T_1000, T)
        check_timesteps(self.timesteps, T, "PredictionEvolution")
        heldout = trainer.datamodule.heldout_dataset()  # type: ignore[attr-defined]  # Lightning sets Trainer.datamodule without declaring it
        examples = fixed_examples(trainer.log_dir or trainer.default_root_dir, heldout, self.num_images)
        self.images, self.masks, self.captions = examples.images, examples.masks, examples.captions

    def _ready(self) -> tuple[torch.Tensor, list[int]]:
        """The fixed images (N, C, H, W) and the t grid, which setup chose."""
        if self.images is None or self.timesteps is None:
            raise RuntimeError("PredictionEvolution observes only after its setup for fit chose the images and timesteps")
        return self.images, self.timesteps

    @torch.no_grad()
    def predictions(self, pl_module, precision: Callable[[], AbstractContextManager] = nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t and x0_hat, each (T, N, C, H, W) float32 on the CPU, with the chosen weights; the
        UNet runs in ``precision``."""
        images, grid = self._ready()
        device, unet = pl_module.device, pl_module.observation_unet()  # reads no hooks: compiled when training is
        x0 = images.to(device)
        noisy, predicted = [], []
        with eval_mode(pl_module), pl_module.ema_weights() if self.weights == "ema" else nullcontext():
            # A conditional model predicts from each image's own caption (no guidance).
            condition = pl_module.encode_captions(self.captions) if pl_module.caption_encoder is not None else None
            # Fixed noise per t, moved in one copy; results come back in one copy after the loop, so
            # the host never waits for the device between timesteps.
            generators = [torch.Generator().manual_seed(1234 + j) for j in range(len(grid))]
            noise = torch.stack([torch.randn(images.shape, generator=g) for g in generators]).to(device)
            for j, t in enumerate(grid):
                interrupt.check()
                timesteps = torch.full((len(x0),), t, device=device, dtype=torch.long)
                x_t = pl_module.scheduler.add_noise(x0, noise[j], timesteps)
                with precision():
                    output = sampling.guided_output(unet, x_t, timesteps, condition).float()
                noisy.append(x_t)
                predicted.append(ddpm.predict_x0(pl_module.scheduler, output, x_t, timesteps).clamp(-1, 1))
        return torch.stack(noisy).float().cpu(), torch.stack(predicted).float().cpu()

    @override
    def observe(self, trainer, pl_module, step: int) -> None:
        writer = self.writer(trainer)
        originals, grid = self._ready()
        noisy, predicted = self.predictions(pl_module, self.unet_precision(trainer))
        # One labelled row per t, one column per image.
        columns = [f"image {i + 1}" for i in range(len(originals))]
        for tag, images, what in ((tb.PRED_X0_HAT, predicted, "x0_hat, the model's estimate of the clean image"), (tb.PRED_X_T, noisy, "x_t, its input")):
            rows = {f"t = {t}": images[j] for j, t in enumerate(grid)}
            writer.add_figure(tag, viz.image_rows(rows, columns, f"{what}, by timestep (training step {step})"), step)
        scalars: dict[str, float] = {}
        curves: dict[str, list[float]] = {}
        truth = viz.to_unit(originals)
        for j, t in enumerate(grid):
            estimate = viz.to_unit(predicted[j])
            low, high = frequency_band_errors(estimate, truth)
            # One tensor without return_full_image (torchmetrics annotates both of its returns).
            ssim = cast(torch.Tensor, structural_similarity_index_measure(estimate, truth, data_range=1.0))
            values = {
                "mse": float((estimate - truth).square().mean()),
                "psnr": float(peak_signal_noise_ratio(estimate, truth, data_range=1.0)),
                "ssim": float(ssim),
                "mean_colour_error": float(mean_colour_error(estimate, truth).mean()),
                "low_band_error": float(low.mean()),
                "high_band_error": float(high.mean()),
            }
            if self.masks is not None:
                recovery = concept_recovery(predicted[j], originals, self.masks)
                values.update({f"recovery_{k}": float(v.mean()) for k, v in recovery.items()})
            for name, value in values.items():
                recovered = name.startswith("recovery_")
                scalars[tb.recovery_tag(name.removeprefix("recovery_"), t) if recovered else tb.denoise_tag(name, t)] = value
                curves.setdefault(name, []).append(value)
        tb.log_scalars(writer, scalars, step)
        writer.add_figure(tb.DENOISE_CURVES, viz.metric_curves(curves, grid, f"x0_hat vs x0 by timestep (step {step})"), step)
        if self.trajectory_steps:
            with self.unet_precision(trainer)():
                trajectory = self._trajectory(pl_module)
            writer.add_image(tb.PRED_TRAJECTORY, trajectory, step)

    def _trajectory(self, pl_module) -> torch.Tensor:
        """Rows: x_t and x0_hat every k steps of one reverse process from fixed noise (EMA weights)."""
        count = min(4, len(self._ready()[0]))
        captions = None
        if pl_module.caption_encoder is not None:
            captions = [""] * count  # unconditional: the trajectory shows what the model does alone
        generator = torch.Generator(device=pl_module.device).manual_seed(0)
        scheduler = ddpm.sampling_scheduler(pl_module.scheduler, "ddpm")
        rows_t, rows_x0 = [], []
        with torch.no_grad(), eval_mode(pl_module), pl_module.ema_weights():
            condition = pl_module.encode_captions(captions) if captions else None
            records = sampling.denoise(
                pl_module.observation_unet(),
                scheduler,
                batch_size=count,
                num_inference_steps=self.trajectory_steps,
                generator=generator,
                condition=condition,
            )
            for record in records:
                if record.index % self.trajectory_every == 0 or record.index == self.trajectory_steps - 1:
                    rows_t.append(record.x_t.float().cpu())
                    rows_x0.append(record.x0_hat.float().clamp(-1, 1).cpu())
        # A row per kept step: x_t and x0_hat side by side for each image.
        both = torch.stack([torch.stack(rows_t), torch.stack(rows_x0)])  # (2, steps, count, C, H, W)
        return viz.image_grid(rearrange(both, "kind s n c h w -> (s n kind) c h w"), columns=2 * count)
