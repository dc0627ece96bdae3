"""DiffusionModule: a diffusers UNet + DDPM scheduler trained with Lightning, with EMA weights.

Thin by design: the noise maths, UNets and sampler live in the core (``diffprobe.diffusion``); this
file and its mixins (``observation``, ``online_heads``) wire them to Lightning (optimizer, logging,
checkpoint state).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from typing_extensions import override

from diffprobe.capture.taps import FeatureTaps
from diffprobe.choices import BetaSchedule, LrSchedule, PredictionType
from diffprobe.diffusion import ddpm, sampling
from diffprobe.diffusion.captions import CaptionEncoder
from diffprobe.diffusion.folders import fine_tuning_unet
from diffprobe.diffusion.metrics import TimestepBinnedMean
from diffprobe.diffusion.model import CHECKPOINT_MARKER
from diffprobe.diffusion.unet import build_unet, count_parameters
from diffprobe.probes.heads import ProbeHeads
from diffprobe.report import tb
from diffprobe.training import optimization
from diffprobe.training.ema import AveragedWeights
from diffprobe.training.exact_resume import ExactResume
from diffprobe.training.finite import NonFiniteGuard
from diffprobe.training.initial_checkpoint import InitialCheckpoint
from diffprobe.training.observation import Observation
from diffprobe.training.online_heads import OnlineProbeHeads, match_checkpoint
from diffprobe.training.run_safety import RunSafety


def _check_settings(condition_dropout: float, ema_decay: float, check_finite_every_n_steps: int, lr_schedule: str) -> None:
    if not 0.0 <= condition_dropout < 1.0:
        raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
    if not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}")
    if check_finite_every_n_steps < 1:
        raise ValueError(f"check_finite_every_n_steps must be >= 1, got {check_finite_every_n_steps}")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")


class DiffusionModule(OnlineProbeHeads, Observation, pl.LightningModule):
    """Train or fine-tune a DDPM UNet.

    Args:
        preset: UNet preset (``tiny``, ``ddpm-cifar10``; conditional: ``tiny``, ``small``).
        unet: inline UNet2DModel / UNet2DConditionModel config keys, overriding the preset.
        pretrained: diffusers folder or hub id to fine-tune from (its scheduler too, if present).
        conditional: train a caption-conditional UNet2DConditionModel with classifier-free guidance.
        image_size, in_channels: set from the data (linked by the CLI).
        vocabulary: caption words (linked from the data); used when conditional.
        max_caption_tokens: caption length in tokens (padded).
        condition_dropout: probability of training on the empty caption (for CFG).
        guidance_scale: CFG weight w used when sampling.
        num_train_timesteps, beta_schedule, prediction_type: the DDPM noise process.
        loss_buckets: number of equal timestep buckets for the per-timestep loss.
        learning_rate, weight_decay, adam_betas: AdamW.
        warmup_steps, lr_schedule: linear warm-up, then cosine decay or constant.
        ema_decay, ema_warmup, ema_inv_gamma, ema_power: diffusers EMAModel; with warm-up the
            decay is ``min(ema_decay, 1 - (1 + step / inv_gamma) ** -power)``.
        channels_last, compile, compile_mode, compile_backend: GPU speed options (torch.compile's
            mode and backend; OnlineProbes' features come out of the compiled graph).
        check_finite_every_n_steps: how often to stop on a NaN/inf loss (each check syncs the GPU).
        run_safety: add the RunSafety callback to every fit (atomic checkpoints, SIGTERM / SIGINT
            checkpoint-and-stop, TensorBoard purge on resume) and ExactResume (random states in every
            checkpoint); off for a launcher that owns the signals.
        keep_initial_weights: write ``checkpoints/step=000000.ckpt`` before the first step (the init
            baseline every probe result is compared with); needs a ModelCheckpoint.
    """

    global_step_at_save: int  # set only on a module loaded from a checkpoint (training.checkpoints)

    def __init__(
        self,
        preset: str | None = "tiny",
        unet: dict[str, Any] | None = None,
        pretrained: str | None = None,
        conditional: bool = False,
        image_size: int = 32,
        in_channels: int = 3,
        vocabulary: list[str] | None = None,
        max_caption_tokens: int = 16,
        condition_dropout: float = 0.1,
        guidance_scale: float = 3.0,
        num_train_timesteps: int = 1000,
        beta_schedule: BetaSchedule = "linear",
        prediction_type: PredictionType = "epsilon",
        loss_buckets: int = 10,
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 500,
        lr_schedule: LrSchedule = "cosine",
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        ema_inv_gamma: float = 1.0,
        ema_power: float = 0.75,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
        check_finite_every_n_steps: int = 1,
        run_safety: bool = True,
        keep_initial_weights: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        _check_settings(condition_dropout, ema_decay, check_finite_every_n_steps, lr_schedule)

        # 1. The UNet and its noise schedule.
        self.loss_by_t = TimestepBinnedMean(loss_buckets)
        self.probe_heads: ProbeHeads | None = None  # OnlineProbes' heads, trained by the same backward
        self.feature_taps: FeatureTaps | None = None  # the training forward that also returns their features
        self.needs_compile = bool(compile)  # configure_model (re)compiles the training forward when set
        self.probe_learning_rate: float | None = None
        self._listed_parameters: list[torch.nn.Parameter] | None = None  # trained_parameters() during training
        self.nonfinite = NonFiniteGuard()
        self.use_scheduler(ddpm.build_scheduler(num_train_timesteps, beta_schedule, prediction_type))
        shape = {"conditional": conditional, "image_size": image_size, "in_channels": in_channels}
        self.unet = self._make_unet(preset, unet, pretrained, shape, {"num_train_timesteps": num_train_timesteps, "prediction_type": prediction_type})

        # 2. Captions -> cross-attention context (conditional models only).
        if conditional and not vocabulary:
            raise ValueError("a conditional model needs a caption vocabulary; the data module gives it (data.vocabulary)")
        width = self.unet.config.get("cross_attention_dim")
        self.caption_encoder = CaptionEncoder(list(vocabulary or []), max_caption_tokens, width) if conditional else None
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        # 3. EMA of every trained weight (diffusers' EMAModel); training always continues from the raw weights.
        modules = {"unet": self.unet, "caption_encoder": self.caption_encoder}
        self.ema = AveragedWeights(modules, decay=ema_decay, use_ema_warmup=ema_warmup, inv_gamma=ema_inv_gamma, power=ema_power)

    def _make_unet(self, preset: str | None, overrides: dict[str, Any] | None, pretrained: str | None, shape: dict, noise_process: dict):
        """A preset plus inline overrides, or pretrained weights (whose stored noise process, when
        they have one, replaces the configured one)."""
        if pretrained is None:
            if preset is None and not overrides:
                raise ValueError("give a UNet: a preset name, an inline unet config, or pretrained weights")
            return build_unet(preset, **shape, overrides=overrides)
        if overrides:
            raise ValueError("--model.unet cannot be combined with --model.pretrained: the architecture comes from the pretrained folder. Drop one of them.")
        loaded = fine_tuning_unet(pretrained, **shape, noise_process=noise_process, warn=rank_zero_warn)
        if loaded.noise_process_known:  # keep the noise process the weights were trained with
            self.use_scheduler(loaded.scheduler)
        return loaded.unet

    def use_scheduler(self, scheduler) -> None:
        """Set the training noise process (and the timestep buckets that depend on its length)."""
        self.scheduler = scheduler
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.bucket_bounds = ddpm.bucket_bounds(self.num_train_timesteps, self.loss_by_t.num_buckets)

    def is_fitting(self) -> bool:
        """A Trainer is attached and its fit is running (not before, after, or in a notebook)."""
        return self._trainer is not None and self.trainer.state.fn == "fit" and self.trainer.state.status == "running"

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        if self._listed_parameters is not None:
            return self._listed_parameters
        encoder = [] if self.caption_encoder is None else list(self.caption_encoder.parameters())
        return list(self.unet.parameters()) + encoder

    @override
    def on_train_start(self) -> None:
        # Listed once per fit, after the strategy has set the model up: the EMA update and the
        # clipping read the list every step, and walking the module tree costs about a
        # millisecond each time (3% of a 32 ms GPU step).
        self._listed_parameters = None
        self._listed_parameters = self.trained_parameters()
        for optimizer in self.trainer.optimizers if self._trainer is not None else []:
            if isinstance(optimizer, torch.optim.AdamW):
                optimization.use_device_implementation(optimizer, self.trainer)

    @override
    def on_train_end(self) -> None:
        self._listed_parameters = None
        self.release_observation_unet()

    @override
    def teardown(self, stage: str) -> None:
        self._listed_parameters = None  # also when fit stopped on an error
        self.release_observation_unet()

    @override
    def configure_model(self) -> None:
        if self.needs_compile:
            options = {"mode": self.hparams["compile_mode"], "backend": self.hparams["compile_backend"]}
            # In place: state_dict keys unchanged. With online probes the tapped forward is compiled
            # (the pooled features are outputs of the same graph as the prediction), and so are the
            # heads: a few fused kernels per step instead of a chain of small eager ones.
            (self.feature_taps if self.feature_taps is not None else self.unet).compile(**options)
            if self.probe_heads is not None:
                self.probe_heads.compile(**options)
            self.needs_compile = False

    # ---- conditioning -------------------------------------------------------------------------
    def encode_captions(self, captions: list[str], drop_probability: float = 0.0) -> torch.Tensor | None:
        """(B, L, D) cross-attention context (:meth:`CaptionEncoder.encode`), None when unconditional."""
        return None if self.caption_encoder is None else self.caption_encoder.encode(captions, drop_probability)

    # ---- training -----------------------------------------------------------------------------
    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> STEP_OUTPUT:
        # 1. Noise the clean images at uniformly drawn timesteps.
        x0 = batch["image"]
        if self.hparams["channels_last"]:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        # 2. Predict and score against the prediction-type target, per sample.
        context, keep = None, None
        if self.caption_encoder is not None:
            keep = torch.rand(x0.shape[0], device=x0.device) >= self.hparams["condition_dropout"]  # False: the empty caption (CFG)
            context = self.caption_encoder.encode(batch["caption"], keep=keep)
        if self.feature_taps is not None:
            prediction, features = self.feature_taps(x_t, t, context)
        else:
            prediction = sampling.guided_output(self.unet, x_t, t, context)
        losses = ddpm.per_sample_loss(prediction, ddpm.training_target(self.scheduler, x0, noise, t))
        loss = losses.mean()
        # 3. Stop on a non-finite loss before the optimizer can spread it into the weights.
        self.nonfinite.update(loss)
        if self.global_step % self.hparams["check_finite_every_n_steps"] == 0:
            self.nonfinite.raise_if_seen(f"a non-finite training loss (nan/inf) was seen by global step {self.global_step}", self._trainer)
        self.loss_by_t.update(losses, ddpm.timestep_buckets(t, self.num_train_timesteps, len(self.bucket_bounds)))
        self.log(tb.LOSS, loss, prog_bar=True)
        if self.probe_heads is not None:  # the heads learn from this very forward's detached features
            # A conditional model's heads learn only from the caption-dropped samples: with a caption
            # the features carry it, and the heads would read the caption instead of the image.
            probe_loss, correct, bucket, used = self.probe_heads(features, t, batch["labels"], None if keep is None else ~keep)
            # Copies: under CUDA graphs the heads' outputs live in memory that an observer's compiled
            # call (SampleGrid, before OnlineProbes reads them in on_train_batch_end) may free.
            return {"loss": loss + probe_loss, "probe_correct": correct.clone(), "probe_bucket": bucket.clone(), "probe_used": used.clone()}
        return loss

    @override
    def on_fit_start(self) -> None:
        # seed_everything gives every rank the same seed: offset it so that ranks draw different
        # timesteps, noise and caption dropout.
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + 7919 * self.trainer.global_rank)

    @override
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Right after the weights changed, once per optimizer step (also with gradient
        # accumulation), before any callback samples or checkpoints them.
        self.ema.step(self.trained_parameters())

    @override
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Lightning sets Trainer.log_every_n_steps in its logger connector without declaring it.
        if self.global_step % self.trainer.log_every_n_steps != 0:  # type: ignore[attr-defined]
            return
        means = self.loss_by_t.compute()
        self.loss_by_t.reset()
        for (first, last), value in zip(self.bucket_bounds, means.tolist()):
            if value == value:  # skip buckets without samples (NaN)
                self.log(tb.LOSS_BY_T.format(bucket=tb.bucket_tag(first, last)), value)
        optimizer = self.optimizers()
        if isinstance(optimizer, list):  # configure_optimizers makes exactly one
            raise RuntimeError(f"DiffusionModule has one optimizer, found {len(optimizer)}")
        self.log(tb.LEARNING_RATE, optimizer.param_groups[0]["lr"])
        self.log(tb.EMA_DECAY, float(self.ema.cur_decay_value or 0.0))

    @override
    def configure_optimizers(self):
        return optimization.adamw_and_schedule(self.trained_parameters(), self.probe_heads, self.probe_learning_rate, self.hparams, self._trainer)

    @override
    def configure_callbacks(self):
        # Atomic checkpoints, a clean stop on SIGTERM / SIGINT and a clean TensorBoard history on
        # resume, for every fit (train.py and the Python API alike).
        callbacks: list[pl.Callback] = [RunSafety(), ExactResume()] if self.hparams["run_safety"] else []
        return callbacks + ([InitialCheckpoint()] if self.hparams["keep_initial_weights"] else [])

    # ---- checkpoint state ---------------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Never write weights that went bad since the last check.
        self.nonfinite.raise_if_seen(f"a non-finite training loss was seen before the checkpoint at global step {self.global_step}", self._trainer)
        checkpoint[CHECKPOINT_MARKER] = {
            "unet_class": type(self.unet).__name__,
            "unet_config": dict(self.unet.config),
            "scheduler_config": dict(self.scheduler.config),
        }
        checkpoint["ema"] = self.ema.schedule_state()  # the averages are in state_dict (ema.copy.*)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before the state dict is loaded: older checkpoints get their averages moved into it.
        if "ema" in checkpoint:
            self.ema.upgrade_checkpoint(checkpoint, prefix="ema.")
            self.ema.load_schedule_state(checkpoint["ema"])
        # A run resumed (or a checkpoint loaded) with online probes added, removed or changed.
        notes = match_checkpoint(checkpoint, self.probe_heads, self.probe_learning_rate)
        if self._trainer is not None:  # a resume (loading for probe.py drops the heads silently)
            for note in notes:
                rank_zero_warn(f"resuming: {note}")

    def describe(self) -> str:
        return f"{type(self.unet).__name__} with {count_parameters(self.unet):,} parameters"
