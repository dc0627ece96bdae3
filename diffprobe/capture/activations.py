"""Pooled block outputs of a UNet, through forward hooks that are always removed.

    with capture_features(unet, ["mid_block", "up_blocks.1"]) as features:
        unet(x_t, t)
    features["mid_block"]  # (B, D) detached, pooled

Pooling: ``"mean"`` (global average, D = channels) or ``"grid2"`` / ``"grid4"`` (average over a
2x2 / 4x4 grid of cells, D = channels * cells, keeps coarse position).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from diffprobe.capture.layers import default_layers, find_layers
from diffprobe.choices import Pool  # noqa: F401  (re-exported: the core's name for it)

DEFAULT_POOL: Pool = "mean"


def pool_features(hidden: torch.Tensor, pool: Pool = DEFAULT_POOL) -> torch.Tensor:
    """(B, C, H, W) -> (B, D) float32."""
    hidden = hidden.float()
    if pool == "mean":
        return hidden.mean(dim=(2, 3))
    cells = {"grid2": 2, "grid4": 4}.get(pool)
    if cells is None:
        raise ValueError(f"pool must be 'mean', 'grid2' or 'grid4', got {pool!r}")
    return nn.functional.adaptive_avg_pool2d(hidden, cells).flatten(1)


@contextmanager
def capture_features(unet: nn.Module, layers: Sequence[str] | None = None, pool: Pool = DEFAULT_POOL) -> Iterator[dict[str, torch.Tensor]]:
    """Record pooled, detached outputs of ``layers`` for every forward inside the block.

    A block called several times (e.g. a CFG batch run twice) keeps its last output. Hooks only
    read: the UNet's output is bit-identical with and without capture, and no gradient flows back
    through a captured feature.
    """
    pool_features(torch.zeros(1, 1, 4, 4), pool)  # validate before hooking anything
    with _recording(unet, layers, lambda hidden: pool_features(hidden, pool)) as features:
        yield features


@contextmanager
def capture_maps(unet: nn.Module, layers: Sequence[str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Like :func:`capture_features`, unpooled: each layer's output as (B, C, H, W) float32 maps
    (for the spatial dictionaries of ``probe.py discover``)."""
    with _recording(unet, layers, lambda hidden: hidden.float()) as features:
        yield features


@contextmanager
def _recording(unet: nn.Module, layers: Sequence[str] | None, keep: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    targets = find_layers(unet, list(layers) if layers is not None else default_layers(unet))
    features: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output  # down blocks return (h, skips)
            features[name] = keep(hidden.detach())

        return hook

    try:
        for name, module in targets.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield features
    finally:
        for handle in handles:
            handle.remove()
