"""The DiffusionModule's side of looking at it: its EMA weights swapped in, fixed-seed samples,
and the UNet the observers call (during a compiled fit, a forward compiled apart from training's).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch

from diffprobe.capture import eager, eval_mode
from diffprobe.choices import Sampler
from diffprobe.diffusion import sampling
from diffprobe.training.compiled import ObservationUNet

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from diffprobe.diffusion.captions import CaptionEncoder
    from diffprobe.diffusion.unet import UNet
    from diffprobe.training.ema import AveragedWeights

    _Host = pl.LightningModule  # to mypy, the mixin is the LightningModule it is mixed into
else:
    _Host = object


class Observation(_Host):
    """Mixed into DiffusionModule (which provides unet, scheduler, ema, caption_encoder, hparams,
    trained_parameters, encode_captions)."""

    if TYPE_CHECKING:  # provided by DiffusionModule
        unet: UNet
        scheduler: Any  # a diffusers scheduler
        ema: AveragedWeights
        caption_encoder: CaptionEncoder | None

        def trained_parameters(self) -> list[torch.nn.Parameter]: ...

        def is_fitting(self) -> bool: ...

    _observation_unet: ObservationUNet | None = None  # the observers' compiled forward during a fit

    def ema_weights(self) -> AbstractContextManager:
        """Swap the EMA weights in for the duration; the raw training weights come back exactly."""
        return self.ema.swapped_into(self.trained_parameters())

    @torch.no_grad()
    def sample(
        self,
        num_images: int = 16,
        *,
        seed: int = 0,
        num_inference_steps: int = 100,
        sampler: Sampler = "ddpm",
        captions: list[str] | None = None,
        guidance_scale: float | None = None,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """Images (N, C, H, W) in [-1, 1] from a fixed seed; restores train/eval mode after. During a
        compiled fit through the observers' compiled UNet; otherwise eagerly, also after a fit that
        compiled the UNet in place (a notebook's samples never recompile training's graph)."""
        with eval_mode(self), eager(self.unet), self.ema_weights() if use_ema else nullcontext():
            return sampling.sample(
                self.observation_unet(),
                self.scheduler,
                self.caption_encoder,
                num_images,
                seed=seed,
                num_inference_steps=num_inference_steps,
                sampler=sampler,
                captions=captions,
                guidance_scale=self.hparams["guidance_scale"] if guidance_scale is None else guidance_scale,
            )

    def observation_unet(self):
        """The UNet for observers that read no hooks (sampling, x0 predictions): during a fit with
        ``compile``, its forward compiled apart from training's (:class:`ObservationUNet`); else
        ``self.unet`` (after a compiled fit without OnlineProbes still compiled in place by training:
        callers run it under ``capture.eager``, as :meth:`sample` does)."""
        if not (self.hparams["compile"] and self.is_fitting()):
            return self.unet
        if self._observation_unet is None or self._observation_unet.unet is not self.unet:
            self._observation_unet = ObservationUNet(self.unet, self.hparams["compile_mode"], self.hparams["compile_backend"])
        return self._observation_unet

    def release_observation_unet(self) -> None:
        """Let the observers' compiled forward (and its graphs) go: after a fit, or when it failed."""
        self._observation_unet = None
