"""The DiffusionModule's side of OnlineProbes: attaching the heads (and the tapped training
forward that feeds them), taking them off, and clipping the UNet's gradients without them.

The heads train in the optimizer's second parameter group (``DiffusionModule.configure_optimizers``)
by the same backward as the UNet; this mixin keeps the UNet's own training exactly what it is
without heads: the same random stream, the same gradients, the same clipping.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import GradClipAlgorithmType

from diffprobe.capture.taps import FeatureTaps
from diffprobe.probes.heads import ProbeHeads, feature_widths


class OnlineProbeHeads:
    """Mixed into DiffusionModule (which provides unet, caption_encoder, trained_parameters)."""

    def attach_probe_heads(self, layers: list[str], pool: str, num_classes: list[int], num_buckets: int, learning_rate: float) -> None:
        """Online probes (OnlineProbes calls this in setup, before the optimizer is made): heads on
        the pooled, detached features of the training forward itself, in the optimizer's second
        parameter group (their own constant learning rate, no weight decay, not clipped), trained
        by the same backward. The UNet's gradients, clipping and updates stay exactly as without."""
        context = self.caption_encoder.unconditional(1) if self.caption_encoder is not None else None
        widths = feature_widths(self.unet, layers, pool, context)
        with torch.random.fork_rng(devices=[]):  # observing training must not change its random stream
            torch.manual_seed(0)
            heads = ProbeHeads(widths, num_classes, num_buckets, self.num_train_timesteps)
        self.probe_heads = heads.to(next(self.unet.parameters()).device)
        self._probe_learning_rate = learning_rate
        if self._taps is not None:
            self._taps.remove()
        self._taps = FeatureTaps(self.unet, layers, pool)
        self._compiled = False  # (re)compile the tapped forward in configure_model

    def detach_probe_heads(self) -> None:
        """Undo :meth:`attach_probe_heads` (OnlineProbes' teardown): a later fit without it trains
        the UNet alone. The checkpoints written meanwhile keep the heads."""
        if self._taps is not None:
            self._taps.remove()
        self._taps = self.probe_heads = None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self.probe_heads is None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_val is None or gradient_clip_val <= 0:  # as Lightning's own path: no clipping
            return None
        # The UNet is clipped exactly as without heads (over its own gradients); the heads are not.
        parameters = [p for p in self.trained_parameters() if p.grad is not None]
        if gradient_clip_algorithm == GradClipAlgorithmType.VALUE:
            torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)

