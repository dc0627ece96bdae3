"""The DiffusionModule's side of OnlineProbes: attaching the heads (and the tapped training
forward that feeds them), taking them off, and clipping the UNet's gradients without them.

The heads train in the optimizer's second parameter group (``DiffusionModule.configure_optimizers``)
by the same backward as the UNet; this mixin keeps the UNet's own training exactly what it is
without heads: the same random stream, the same gradients, the same clipping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from lightning.pytorch.utilities import GradClipAlgorithmType

from diffprobe.capture.taps import FeatureTaps
from diffprobe.choices import Pool
from diffprobe.probes.heads import ProbeHeads, feature_widths

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from diffprobe.diffusion.captions import CaptionEncoder
    from diffprobe.diffusion.unet import UNet

    _Host = pl.LightningModule  # to mypy, the mixin is the LightningModule it is mixed into
else:
    _Host = object


class OnlineProbeHeads(_Host):
    """Mixed into DiffusionModule (which provides unet, caption_encoder, trained_parameters)."""

    if TYPE_CHECKING:  # provided by DiffusionModule (the state shared with it set in its __init__)
        probe_heads: ProbeHeads | None
        feature_taps: FeatureTaps | None
        probe_learning_rate: float | None
        needs_compile: bool
        unet: UNet
        caption_encoder: CaptionEncoder | None
        num_train_timesteps: int

        def trained_parameters(self) -> list[torch.nn.Parameter]: ...

    def attach_probe_heads(self, layers: list[str], pool: Pool, num_classes: list[int], num_buckets: int, learning_rate: float) -> None:
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
        self.probe_learning_rate = learning_rate
        if self.feature_taps is not None:
            self.feature_taps.remove()
        self.feature_taps = FeatureTaps(self.unet, layers, pool)
        self.needs_compile = bool(self.hparams["compile"])  # (re)compile the tapped forward in configure_model

    def detach_probe_heads(self) -> None:
        """Undo :meth:`attach_probe_heads` (OnlineProbes' teardown): a later fit without it trains
        the UNet alone. The checkpoints written meanwhile keep the heads."""
        if self.feature_taps is not None:
            self.feature_taps.remove()
        self.feature_taps = self.probe_heads = None

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


HEADS_PREFIX = "probe_heads."


def match_checkpoint(checkpoint: dict, heads: ProbeHeads | None, learning_rate: float | None) -> list[str]:
    """Make a checkpoint fit a module with (or without) these heads, in place; returns what was
    changed, for a message. A run may be resumed with OnlineProbes added, removed or changed:

    - state_dict: heads saved but not wanted are dropped; wanted but missing (or of another shape)
      start fresh, from an older checkpoint's OnlineProbes callback state when it has them;
    - the optimizer's heads parameter group (the second) and its learning-rate scheduler entries
      are dropped or added (fresh moments) to match.
    """
    fresh, notes = _match_state(checkpoint, heads)
    for optimizer in checkpoint.get("optimizer_states", [])[:1]:
        notes += _match_optimizer(optimizer, checkpoint.get("lr_schedulers", []), heads, learning_rate, fresh)
    return notes


def _shapes(tensors: dict) -> dict:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _match_state(checkpoint: dict, heads: ProbeHeads | None) -> tuple[bool, list[str]]:
    """The heads' tensors in the state dict: (whether they start afresh, notes)."""
    state = checkpoint.setdefault("state_dict", {})
    saved = {k: v for k, v in state.items() if k.startswith(HEADS_PREFIX)}
    current = {HEADS_PREFIX + k: v for k, v in heads.state_dict().items()} if heads is not None else {}
    if heads is None:
        for key in saved:
            del state[key]
        return False, ["the checkpoint's online probe heads are left out (no OnlineProbes now)"] if saved else []
    if _shapes(saved) == _shapes(current):
        return False, []
    legacy = next((v.get("heads") for k, v in checkpoint.get("callbacks", {}).items() if k.startswith("OnlineProbes") and isinstance(v, dict)), None)
    legacy = {HEADS_PREFIX + "heads." + k: v for k, v in (legacy or {}).items()}
    use = legacy if _shapes(legacy) == _shapes(current) else current
    for key in saved:
        del state[key]
    state.update({k: v.clone() for k, v in use.items()})
    return True, ["online probe heads " + ("taken from the checkpoint's OnlineProbes state" if use is legacy else "start fresh")]


def _scheduler_rates(schedulers: list[dict], change) -> None:
    """Apply ``change`` to every learning-rate scheduler's per-group rate lists."""
    for scheduler in schedulers:
        for key in ("base_lrs", "_last_lr"):
            if isinstance(scheduler.get(key), list):
                scheduler[key] = change(scheduler[key])


def _match_optimizer(optimizer: dict, schedulers: list[dict], heads: ProbeHeads | None, learning_rate: float | None, fresh: bool) -> list[str]:
    """The heads' parameter group (the second) and the schedulers' rates, dropped, added or resized."""
    groups = optimizer["param_groups"]
    count = len(list(heads.parameters())) if heads is not None else 0
    if heads is None and len(groups) == 2:
        for index in groups.pop(1)["params"]:
            optimizer["state"].pop(index, None)
        _scheduler_rates(schedulers, lambda rates: rates[:1])
        return []
    if heads is not None and len(groups) == 1:
        start = max(groups[0]["params"], default=-1) + 1
        group = dict(groups[0], params=list(range(start, start + count)))
        group.update(lr=learning_rate, initial_lr=learning_rate, weight_decay=0.0, betas=(0.9, 0.999))
        groups.append(group)
        _scheduler_rates(schedulers, lambda rates: [*rates, learning_rate])
        return ["the heads get a fresh optimizer group"]
    if heads is None or len(groups) != 2:
        return []
    if fresh:  # other heads (layers, buckets or concepts changed): a fresh group of the right size
        for index in groups[1]["params"]:
            optimizer["state"].pop(index, None)
        start = max(groups[0]["params"], default=-1) + 1
        groups[1]["params"] = list(range(start, start + count))
    if learning_rate is None or groups[1].get("lr") == learning_rate:
        return []
    groups[1].update(lr=learning_rate, initial_lr=learning_rate)  # OnlineProbes' rate changed
    _scheduler_rates(schedulers, lambda rates: [rates[0], learning_rate] if len(rates) == 2 else rates)
    return [f"the online probe heads continue at learning rate {learning_rate}"]
