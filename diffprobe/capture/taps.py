"""A UNet whose forward also returns pooled block features: the training forward that online
probes read, eager or under ``torch.compile`` (CUDA graphs included).

``capture_features`` hooks a UNet for the duration of a ``with`` block, which a compiled graph
cannot see. ``FeatureTaps`` instead keeps its hooks for its lifetime, and its own ``forward``
collects what they pooled into a dict it *returns*: compile ``FeatureTaps`` and the pooled features
are outputs of the same graph as the prediction (dynamo traces the hooks into it), not tensors
stashed outside it. The hooks do nothing unless ``FeatureTaps.forward`` is running, so the UNet
called directly (sampling, ProbeMonitor) is unaffected.

    taps = FeatureTaps(unet, ["mid_block", "up_blocks.1"])
    prediction, features = taps(x_t, t)          # features["mid_block"]: (B, D) float32, detached
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from diffprobe.capture.activations import DEFAULT_POOL, pool_features
from diffprobe.capture.layers import find_layers
from diffprobe.choices import Pool

if TYPE_CHECKING:
    from diffprobe.diffusion.unet import UNet


class FeatureTaps(nn.Module):
    """``forward(x, t, encoder_hidden_states=None) -> (prediction, {layer: pooled (B, D)})``.

    Holds the UNet as a submodule without owning it in state dicts: it is not registered (the
    module that trains the UNet saves it under its own name)."""

    unet: UNet  # in __dict__, set by __init__

    def __init__(self, unet: nn.Module, layers: Sequence[str], pool: Pool = DEFAULT_POOL):
        super().__init__()
        pool_features(torch.zeros(1, 1, 4, 4), pool)  # validate before hooking anything
        self.__dict__["unet"] = unet  # not a registered submodule: state_dict keys stay the owner's
        self.layers, self.pool = list(layers), pool
        self._tapped: dict[str, torch.Tensor] | None = None
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in find_layers(unet, self.layers).items()]

    def _hook(self, name: str):
        def hook(module, args, output):
            if self._tapped is not None:
                hidden = output[0] if isinstance(output, tuple) else output  # down blocks return (h, skips)
                self._tapped[name] = pool_features(hidden.detach(), self.pool)

        return hook

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None):
        self._tapped = {}  # (no try/finally: it would break the compiled graph; the next call resets it)
        if encoder_hidden_states is None:
            prediction = self.unet(x, t).sample
        else:
            prediction = self.unet(x, t, encoder_hidden_states=encoder_hidden_states).sample
        features = {name: self._tapped[name] for name in self.layers}
        self._tapped = None
        return prediction, features

    def remove(self) -> None:
        """Take the hooks off the UNet."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
