"""OnlineProbes: linear heads per (layer, timestep bucket, concept) trained on the detached
features of the training forward pass itself (no extra UNet forward).

The heads live in the DiffusionModule (``probes.heads.ProbeHeads``, attached in ``setup``): the
training forward hands out the pooled features itself (``capture.taps.FeatureTaps``, also under
``torch.compile`` and CUDA graphs), the heads' loss joins the UNet's loss, and one backward and
one optimizer step (the heads in their own parameter group) train both, inside Lightning's
precision and accumulation handling. This callback keeps the score: accuracy per cell accumulates
in a torchmetrics metric (summed across ranks) and is logged every ``log_every_n_steps`` as
``probe_online/<concept>/<layer>/t0000-0099/acc``. The heads and their optimizer state are saved
with the module, so a resumed run continues them.

On a conditional model the heads learn from, and are scored on, only the samples trained on the
empty caption (``condition_dropout`` of each batch, 10% by default): with a caption the features
carry it through cross-attention, and a head would read the caption, not the image (an untrained
model's heads reached 0.4-0.7 at t = 999 that way). They see fewer samples; nothing else costs more.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from diffprobe.capture import check_layers, default_layers
from diffprobe.choices import Pool
from diffprobe.diffusion import ddpm
from diffprobe.diffusion.metrics import CellAccuracy
from diffprobe.report import tb
from diffprobe.training.callbacks.periodic import adopt_unkeyed_state


class OnlineProbes(pl.Callback):
    """Linear heads per (layer, timestep bucket, concept), trained on the training step's own features.

    Args:
        layers: UNet module names (default: each down block, the mid block, each up block).
        pool: ``mean`` or ``grid2`` / ``grid4`` pooling of the block outputs.
        num_buckets: equal timestep buckets over [0, T), one head per bucket.
        learning_rate: the heads' (constant) AdamW learning rate, in their own parameter group.
        log_every_n_steps: how often to log (and reset) the accumulated accuracy.
    """

    def __init__(
        self,
        layers: list[str] | None = None,
        pool: Pool = "mean",
        num_buckets: int = 10,
        learning_rate: float = 1e-3,
        log_every_n_steps: int = 50,
    ):
        if num_buckets < 1 or log_every_n_steps < 1 or learning_rate <= 0:
            raise ValueError("num_buckets and log_every_n_steps must be >= 1 and learning_rate > 0")
        self.layers, self.pool, self.num_buckets = layers, pool, num_buckets
        self.learning_rate, self.log_every_n_steps = learning_rate, log_every_n_steps
        self._layers_arg = list(layers) if layers else None  # as given: part of the state key
        self._logged_step: int | None = None  # the step last logged (once per optimizer step)
        self._logged: dict[str, float] = {}  # what was logged then, kept in the checkpoint

    @override
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self.layers = check_layers(pl_module.unet, self.layers or default_layers(pl_module.unet), who="OnlineProbes")
        if pl_module.caption_encoder is not None and pl_module.hparams.condition_dropout <= 0:
            raise ValueError(
                "OnlineProbes on a conditional model learn from the samples trained on the empty caption, and "
                "--model.condition_dropout 0 leaves none; set it above 0 (0.1 is usual) or remove OnlineProbes"
            )
        self.concepts = dict(trainer.datamodule.concepts)  # type: ignore[attr-defined]  # Lightning sets Trainer.datamodule without declaring it
        if not self.concepts:
            raise ValueError("OnlineProbes needs concept labels; this data has none (set --data.concept_columns)")
        self.bounds = ddpm.bucket_bounds(pl_module.num_train_timesteps, self.num_buckets)
        self.accuracy = CellAccuracy((len(self.layers), self.num_buckets, len(self.concepts)))
        pl_module.attach_probe_heads(self.layers, self.pool, [len(v) for v in self.concepts.values()], self.num_buckets, self.learning_rate)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            pl_module.detach_probe_heads()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        correct, bucket, used = outputs["probe_correct"], outputs["probe_bucket"], outputs["probe_used"]
        if self.accuracy.device != correct.device:  # moved once: a copy every step would stall the GPU queue
            self.accuracy.to(correct.device)
        self.accuracy.update(correct, bucket, used)
        # Once per optimizer step: with gradient accumulation this hook runs several times per step.
        if trainer.global_step % self.log_every_n_steps == 0 and trainer.global_step != self._logged_step:
            self._logged_step = trainer.global_step
            self._log(trainer)

    def _log(self, trainer: pl.Trainer) -> None:
        if self.layers is None:
            raise RuntimeError("OnlineProbes logs only after its setup for fit, which checks its layers")
        accuracy = self.accuracy.compute()  # (L, buckets, K), NaN where a bucket saw no sample
        self.accuracy.reset()
        values = {}
        for i, layer in enumerate(self.layers):
            for b, (first, last) in enumerate(self.bounds):
                for k, concept in enumerate(self.concepts):
                    if accuracy[i, b, k] == accuracy[i, b, k]:
                        tag = tb.probe_tag(tb.PROBE_PREFIX["online"], concept, layer, tb.bucket_tag(first, last))
                        values[tag] = float(accuracy[i, b, k])
        # Written once, at the step they were measured (every rank took part in compute()). Through
        # Lightning's log they would be re-written at every log_every_n_steps until they change.
        self._logged = values
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, trainer.global_step)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        # A run resumed at the step it last logged: the resume hid that point from TensorBoard (RunSafety
        # purges from the resume step on) and the next log is a whole interval away; write it again.
        if self._logged and self._logged_step == trainer.global_step and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(self._logged, trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"logged_step": self._logged_step, "logged": dict(self._logged)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._logged_step = state_dict.get("logged_step")
        self._logged = dict(state_dict.get("logged", {}))

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self._layers_arg, pool=self.pool, num_buckets=self.num_buckets)

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        adopt_unkeyed_state(checkpoint, type(self).__qualname__, self.state_key)

    # The heads and their optimizer state are the module's (state_dict / optimizer_states); an
    # older checkpoint's callback state with heads is read by the module (probes.heads.match_checkpoint).
