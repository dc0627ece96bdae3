"""ConceptFidelity: every N steps, does the model *render* each concept?

A conditional model samples ``num_captions`` fixed held-out captions; the concept reader (trained
once per data configuration on its clean images, and cached: ``fidelity.readers``) reads each
sample, and ``fidelity/<concept>`` is the share showing the caption's value. An unconditional model
samples as many images, and ``fidelity/<concept>`` is the total-variation distance between the
reader's value distribution on them and on held-out data (lower is better). Beside it,
``Overview/rendered_at_step/<concept>``: the first step from which fidelity has stayed >= 0.90
(TV <= 0.10), -1 while it has not. The samples use a fixed seed, so the curve moves with the
weights alone.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from diffprobe.capture import eager, eval_mode
from diffprobe.choices import Sampler, Weights
from diffprobe.diffusion.model import DiffusionModel
from diffprobe.fidelity import measure, results
from diffprobe.fidelity.readers import cached_reader
from diffprobe.intervene.reader import TrainedReader
from diffprobe.report import tb
from diffprobe.training.callbacks.periodic import PeriodicObserver


class ConceptFidelity(PeriodicObserver):
    """Args:
    every_n_steps: measure after every this many optimizer steps (and at the start and end).
    num_captions: held-out captions sampled (conditional), or images (unconditional).
    num_inference_steps, sampler: the reverse process (ancestral DDPM by default).
    guidance_scale: classifier-free guidance weight (default: the model's).
    weights: sample the ``ema`` or the ``raw`` weights.
    seed: the samples' fixed seed.
    reader_steps, reader_images: training of the concept reader, when the cache has none.
    batch_size: images per sampling batch.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_captions: int = 64,
        num_inference_steps: int = 50,
        sampler: Sampler = "ddpm",
        guidance_scale: float | None = None,
        weights: Weights = "ema",
        seed: int = 0,
        reader_steps: int = 3000,
        reader_images: int = 20_000,
        batch_size: int = 64,
    ):
        super().__init__(every_n_steps)
        for name, value in (("num_captions", num_captions), ("num_inference_steps", num_inference_steps), ("reader_steps", reader_steps),
                            ("reader_images", reader_images), ("batch_size", batch_size)):  # fmt: skip
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        self.num_captions, self.num_inference_steps, self.sampler = num_captions, num_inference_steps, sampler
        self.guidance_scale, self.weights, self.seed = guidance_scale, weights, seed
        self.reader_steps, self.reader_images, self.batch_size = reader_steps, reader_images, batch_size
        self.history: dict[str, dict[int, float]] = {}  # concept -> {step: value}
        self.metric = "fidelity"
        self._reader: TrainedReader | None = None
        self._plan: measure.SamplePlan | None = None
        self._reference: torch.Tensor | None = None

    @override
    def identity(self) -> dict[str, Any]:
        return {"weights": self.weights, "seed": self.seed}

    @override
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Lightning sets Trainer.datamodule without declaring it.
        if stage == "fit" and not getattr(trainer.datamodule, "concepts", None):  # type: ignore[attr-defined]
            raise ValueError("ConceptFidelity reads concepts off samples; this data has none (set --data.concept_columns) or remove the callback")

    def _prepare(self, trainer: pl.Trainer, pl_module) -> None:
        """The reader and the fixed plan, at the first measurement (rank zero only)."""
        data = trainer.datamodule  # type: ignore[attr-defined]  # Lightning sets Trainer.datamodule without declaring it
        self._reader = cached_reader(data.reader_data(self.reader_images), steps=self.reader_steps, seed=self.seed, log=pl.utilities.rank_zero_info)
        self._reader.reader.to(pl_module.device)
        heldout = data.heldout_dataset()
        count = min(self.num_captions, len(heldout))
        items = [heldout[i] for i in range(count)]
        conditional = pl_module.caption_encoder is not None
        if not conditional:
            self.metric = "tv"
        self._plan = measure.SamplePlan(
            num_images=count,
            seed=self.seed,
            num_inference_steps=self.num_inference_steps,
            sampler=self.sampler,
            guidance_scale=self.guidance_scale,
            captions=tuple(item["caption"] for item in items) if conditional else None,
            labels=torch.stack([item["labels"] for item in items]) if conditional else None,
        )
        if not conditional:
            self._reference = measure.read(self._reader.reader, torch.stack([heldout[i]["image"] for i in range(len(heldout))]))[0]

    def scores(self, pl_module) -> list[measure.ConceptScore]:
        """The module's current (EMA or raw) weights, sampled and read."""
        if self._reader is None or self._plan is None:
            raise RuntimeError("ConceptFidelity measures only after its first observation prepared the reader and the plan")
        with eval_mode(pl_module), eager(pl_module.unet), pl_module.ema_weights() if self.weights == "ema" else nullcontext():
            model = DiffusionModel(pl_module.unet, pl_module.scheduler, pl_module.caption_encoder, float(pl_module.hparams.guidance_scale))
            return measure.measure(model, self._reader.reader, self._plan, self._reference, self.batch_size)

    @override
    def observe(self, trainer: pl.Trainer, pl_module, step: int) -> None:
        if self._reader is None:
            self._prepare(trainer, pl_module)
        with self.unet_precision(trainer)():
            scores = self.scores(pl_module)
        writer = self.writer(trainer)
        for score in scores:
            # A resumed run replaces what the first session measured past its resume step.
            self.history[score.concept] = {s: v for s, v in self.history.get(score.concept, {}).items() if s < step} | {step: score.value}
        tb.log_scalars(writer, {tb.fidelity_tag(s.concept): s.value for s in scores}, step)
        threshold, higher = results.RENDERED[self.metric]
        rendered = {c: measure.rendered_at_step(v, threshold, higher) for c, v in self.history.items()}
        tb.log_scalars(writer, {tb.rendered_tag(c): -1 if s is None else s for c, s in rendered.items()}, step)

    @override
    def extra_state(self) -> dict[str, Any]:
        return {"history": {c: dict(v) for c, v in self.history.items()}, "metric": self.metric}

    @override
    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history = {c: {int(s): float(v) for s, v in values.items()} for c, values in state.get("history", {}).items()}
        self.metric = state.get("metric", self.metric)
