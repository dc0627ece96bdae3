"""Online probe heads: linear heads per (layer, timestep bucket, concept) on detached features,
trained by the training step's own backward pass.

All buckets and concepts of a layer are one ``nn.Linear`` (one matmul); the loss of all heads is
one cross-entropy. The features come detached, so the heads' loss reaches only the heads: added
to the UNet's loss, one backward trains both and leaves the UNet's gradients exactly as they are
without heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from diffprobe.choices import Pool
from diffprobe.diffusion.ddpm import timestep_buckets
from diffprobe.probes.fit import class_mask

if TYPE_CHECKING:
    from diffprobe.diffusion.unet import UNet


def head_key(layer: str) -> str:
    return layer.replace(".", "_")  # ModuleDict keys may not contain dots


class ProbeHeads(nn.Module):
    """``forward(features, t, labels) -> (loss, correct (L, N, K) bool, bucket (N,))``.

    Args:
        widths: feature width D of each layer (pooled), in layer order.
        num_classes: classes of each concept (K concepts).
        num_buckets: equal timestep buckets over [0, num_train_timesteps), one head per bucket.
    """

    class_mask: torch.Tensor  # (K, C_max) bool, a buffer

    def __init__(self, widths: Mapping[str, int], num_classes: Sequence[int], num_buckets: int, num_train_timesteps: int):
        super().__init__()
        self.layers = list(widths)
        self.num_buckets, self.num_train_timesteps = num_buckets, num_train_timesteps
        self.num_concepts, self.width = len(num_classes), max(num_classes)
        outputs = num_buckets * self.num_concepts * self.width
        self.heads = nn.ModuleDict({head_key(n): nn.Linear(d, outputs) for n, d in widths.items()})
        self.register_buffer("class_mask", class_mask(num_classes), persistent=False)  # (K, C_max)

    def forward(self, features: Mapping[str, torch.Tensor], t: torch.Tensor, labels: torch.Tensor, rows_used: torch.Tensor | None = None):
        """``rows_used`` (N,) bool: the samples the heads learn from (None: all). A conditional
        model's heads use only the samples trained on the empty caption: elsewhere the features
        carry the caption, and the heads would read it instead of the image."""
        bucket = timestep_buckets(t, self.num_train_timesteps, self.num_buckets)
        rows = torch.arange(labels.shape[0], device=labels.device)
        # 1. One matmul per layer gives every head's logits; keep each sample's own bucket. Outside
        # autocast, in the heads' own dtype (float32 unless the whole module was cast).
        with torch.autocast(labels.device.type, enabled=False):
            heads = torch.stack([self.heads[head_key(n)](features[n].detach().to(cast(nn.Linear, self.heads[head_key(n)]).weight.dtype)) for n in self.layers])
        heads = heads.float()  # (L, N, B * K * C)
        heads = rearrange(heads, "l n (b k c) -> l n b k c", b=self.num_buckets, k=self.num_concepts)
        logits = heads[:, rows, bucket].masked_fill(~self.class_mask, float("-inf"))  # (L, N, K, C_max)
        # 2. One loss for all heads, over the rows used (a weighted mean: shapes stay static for compile).
        targets = repeat(labels, "n k -> (l n k)", l=len(self.layers))
        losses = F.cross_entropy(rearrange(logits, "l n k c -> (l n k) c"), targets, reduction="none")
        weight = torch.ones_like(labels[:, 0], dtype=losses.dtype) if rows_used is None else rows_used.to(losses.dtype)
        weights = repeat(weight, "n -> (l n k)", l=len(self.layers), k=self.num_concepts)
        loss = (losses * weights).sum() / weights.sum().clamp_min(1.0)
        return loss, logits.detach().argmax(-1) == labels.unsqueeze(0), bucket, weight


@torch.no_grad()
def feature_widths(unet: UNet, layers: Sequence[str], pool: Pool, context: torch.Tensor | None = None) -> dict[str, int]:
    """The pooled width of each layer, from one forward of a zero image (in eval mode, on a forked
    random stream: measuring it changes neither the UNet nor the training's random numbers)."""
    from diffprobe.capture import capture_features, eval_mode

    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    parameter = next(unet.parameters())
    x = torch.zeros(1, unet.config.in_channels, height, width, device=parameter.device, dtype=parameter.dtype)
    t = torch.zeros(1, dtype=torch.long, device=parameter.device)
    with torch.random.fork_rng(devices=[]), eval_mode(unet), capture_features(unet, layers, pool) as features:
        if context is None:
            unet(x, t)
        else:
            unet(x, t, encoder_hidden_states=context.to(parameter))
    return {name: int(features[name].shape[1]) for name in layers}
