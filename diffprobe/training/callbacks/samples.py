"""SampleGrid: sample grids from a fixed seed every N steps, so TensorBoard's slider shows the
model improving (``samples/ema``, ``samples/raw``)."""

from __future__ import annotations

import lightning.pytorch as pl
from typing_extensions import override

from diffprobe.choices import Sampler, WeightsOrBoth
from diffprobe.report import tb, viz
from diffprobe.training.callbacks.periodic import PeriodicObserver


class SampleGrid(PeriodicObserver):
    """Args:
    every_n_steps: sample after every this many optimizer steps (and at the start and end).
    num_images: images per grid; a conditional model uses the first held-out captions.
    seed: the fixed seed; the same initial noise at every evaluation.
    num_inference_steps, sampler: the reverse process. Ancestral DDPM is the default: early in
        training DDIM's deterministic steps collapse samples to grey averages, while DDPM shows
        what the model has learned (the right background colours already after a few hundred steps).
    weights: which weights to sample with: ``ema``, ``raw`` or ``both``.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_images: int = 16,
        seed: int = 0,
        num_inference_steps: int = 100,
        sampler: Sampler = "ddpm",
        weights: WeightsOrBoth = "ema",
    ):
        super().__init__(every_n_steps)
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if weights not in ("ema", "raw", "both"):
            raise ValueError(f"weights must be 'ema', 'raw' or 'both', got {weights!r}")
        self.num_images, self.seed = num_images, seed
        self.num_inference_steps, self.sampler, self.weights = num_inference_steps, sampler, weights
        self._captions: list[str] | None = None

    @override
    def identity(self) -> dict:
        return {"seed": self.seed, "sampler": self.sampler, "weights": self.weights}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        if pl_module.caption_encoder is not None:
            heldout = trainer.datamodule.heldout_dataset()  # type: ignore[attr-defined]  # Lightning sets Trainer.datamodule without declaring it
            count = min(self.num_images, len(heldout))
            self._captions = [heldout[i]["caption"] for i in range(count)]

    @override
    def observe(self, trainer: pl.Trainer, pl_module, step: int) -> None:
        writer = self.writer(trainer)
        if step == 0 and self._captions is not None:
            writer.add_text(tb.SAMPLE_CAPTIONS, "\n".join(f"{i}. {c}  " for i, c in enumerate(self._captions)), step)
        kinds = ["ema", "raw"] if self.weights == "both" else [self.weights]
        for kind in kinds:
            with self.unet_precision(trainer)():
                images = pl_module.sample(
                    self.num_images,
                    seed=self.seed,
                    num_inference_steps=self.num_inference_steps,
                    sampler=self.sampler,
                    captions=self._captions,
                    use_ema=kind == "ema",
                )
            writer.add_image(tb.SAMPLES.format(weights=kind), viz.image_grid(images), step)
