"""Online probe heads: linear heads per (layer, timestep bucket, concept) on detached features,
trained by the training step's own backward pass.

All buckets and concepts of a layer are one ``nn.Linear`` (one matmul); the loss of all heads is
one cross-entropy. The features come detached, so the heads' loss reaches only the heads: added
to the UNet's loss, one backward trains both and leaves the UNet's gradients exactly as they are
without heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from diffprobe.diffusion import timestep_buckets
from diffprobe.probes.fit import class_mask


def head_key(layer: str) -> str:
    return layer.replace(".", "_")  # ModuleDict keys may not contain dots


class ProbeHeads(nn.Module):
    """``forward(features, t, labels) -> (loss, correct (L, N, K) bool, bucket (N,))``.

    Args:
        widths: feature width D of each layer (pooled), in layer order.
        num_classes: classes of each concept (K concepts).
        num_buckets: equal timestep buckets over [0, num_train_timesteps), one head per bucket.
    """

    def __init__(self, widths: Mapping[str, int], num_classes: Sequence[int], num_buckets: int, num_train_timesteps: int):
        super().__init__()
        self.layers = list(widths)
        self.num_buckets, self.num_train_timesteps = num_buckets, num_train_timesteps
        self.num_concepts, self.width = len(num_classes), max(num_classes)
        outputs = num_buckets * self.num_concepts * self.width
        self.heads = nn.ModuleDict({head_key(n): nn.Linear(d, outputs) for n, d in widths.items()})
        self.register_buffer("class_mask", class_mask(num_classes), persistent=False)  # (K, C_max)

    def forward(self, features: Mapping[str, torch.Tensor], t: torch.Tensor, labels: torch.Tensor):
        bucket = timestep_buckets(t, self.num_train_timesteps, self.num_buckets)
        rows = torch.arange(labels.shape[0], device=labels.device)
        # 1. One matmul per layer gives every head's logits; keep each sample's own bucket. Outside
        # autocast, in the heads' own dtype (float32 unless the whole module was cast).
        with torch.autocast(labels.device.type, enabled=False):
            heads = torch.stack([self.heads[head_key(n)](features[n].detach().to(self.heads[head_key(n)].weight.dtype)) for n in self.layers])
        heads = heads.float()  # (L, N, B * K * C)
        heads = rearrange(heads, "l n (b k c) -> l n b k c", b=self.num_buckets, k=self.num_concepts)
        logits = heads[:, rows, bucket].masked_fill(~self.class_mask, float("-inf"))  # (L, N, K, C_max)
        # 2. One loss for all heads.
        targets = repeat(labels, "n k -> (l n k)", l=len(self.layers))
        loss = F.cross_entropy(rearrange(logits, "l n k c -> (l n k) c"), targets)
        return loss, logits.detach().argmax(-1) == labels.unsqueeze(0), bucket


@torch.no_grad()
def feature_widths(unet: nn.Module, layers: Sequence[str], pool: str, context: torch.Tensor | None = None) -> dict[str, int]:
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
