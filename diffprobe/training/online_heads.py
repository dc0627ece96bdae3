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
        self.probe_learning_rate = learning_rate
        if self.feature_taps is not None:
            self.feature_taps.remove()
        self.feature_taps = FeatureTaps(self.unet, layers, pool)
        self.needs_compile = bool(self.hparams.compile)  # (re)compile the tapped forward in configure_model

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
    notes: list[str] = []
    state = checkpoint.setdefault("state_dict", {})
    saved = {k: v for k, v in state.items() if k.startswith(HEADS_PREFIX)}
    current = {HEADS_PREFIX + k: v for k, v in heads.state_dict().items()} if heads is not None else {}
    fresh = False
    if heads is None:
        for key in saved:
            del state[key]
        if saved:
            notes.append("the checkpoint's online probe heads are left out (no OnlineProbes now)")
    elif {k: tuple(v.shape) for k, v in saved.items()} != {k: tuple(v.shape) for k, v in current.items()}:
        legacy = next((v.get("heads") for k, v in checkpoint.get("callbacks", {}).items() if k.startswith("OnlineProbes") and isinstance(v, dict)), None)
        legacy = {HEADS_PREFIX + "heads." + k: v for k, v in (legacy or {}).items()}
        use = legacy if {k: tuple(v.shape) for k, v in legacy.items()} == {k: tuple(v.shape) for k, v in current.items()} else current
        for key in saved:
            del state[key]
        state.update({k: v.clone() for k, v in use.items()})
        fresh = True
        notes.append("online probe heads " + ("taken from the checkpoint's OnlineProbes state" if use is legacy else "start fresh"))
    for optimizer in checkpoint.get("optimizer_states", [])[:1]:
        groups = optimizer["param_groups"]
        if heads is None and len(groups) == 2:
            for index in groups.pop(1)["params"]:
                optimizer["state"].pop(index, None)
            for scheduler in checkpoint.get("lr_schedulers", []):
                for key in ("base_lrs", "_last_lr"):
                    if isinstance(scheduler.get(key), list):
                        scheduler[key] = scheduler[key][:1]
        elif heads is not None and len(groups) == 1:
            start = max(groups[0]["params"], default=-1) + 1
            group = dict(groups[0], params=list(range(start, start + len(list(heads.parameters())))))
            group.update(lr=learning_rate, initial_lr=learning_rate, weight_decay=0.0, betas=(0.9, 0.999))
            groups.append(group)
            for scheduler in checkpoint.get("lr_schedulers", []):
                for key in ("base_lrs", "_last_lr"):
                    if isinstance(scheduler.get(key), list):
                        scheduler[key] = [*scheduler[key], learning_rate]
            notes.append("the heads get a fresh optimizer group")
        elif heads is not None and len(groups) == 2:
            if fresh:  # other heads (layers, buckets or concepts changed): a fresh group of the right size
                for index in groups[1]["params"]:
                    optimizer["state"].pop(index, None)
                start = max(groups[0]["params"], default=-1) + 1
                groups[1]["params"] = list(range(start, start + len(list(heads.parameters()))))
            if learning_rate is not None and groups[1].get("lr") != learning_rate:  # OnlineProbes' rate changed
                groups[1].update(lr=learning_rate, initial_lr=learning_rate)
                for scheduler in checkpoint.get("lr_schedulers", []):
                    for key in ("base_lrs", "_last_lr"):
                        if isinstance(scheduler.get(key), list) and len(scheduler[key]) == 2:
                            scheduler[key][1] = learning_rate
                notes.append(f"the online probe heads continue at learning rate {learning_rate}")
    return notes
