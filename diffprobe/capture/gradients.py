"""Full block outputs of a UNet kept IN the autograd graph, for gradient methods (Grad-CAM).

    with capture_outputs(unet, ["mid_block.resnets.0"]) as outputs:
        eps = unet(x_t, t).sample
    grads = torch.autograd.grad(eps.sum(), list(outputs.values()))

``torch.autograd.grad`` (not ``.backward()``) leaves every parameter's ``.grad`` untouched.
Hooks are removed on exit, also on exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from diffprobe.capture.layers import block_layers, find_layers


@contextmanager
def capture_outputs(unet: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output tensor of each named module (the first element when a module returns a
    tuple or a diffusers output), not detached. A module called twice keeps its last output."""
    modules = find_layers(unet, layers, choices=block_layers(unet))
    outputs: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):
        def hook(module, args, output):
            if isinstance(output, tuple):
                output = output[0]
            elif not isinstance(output, torch.Tensor):
                output = output.sample  # e.g. Transformer2DModelOutput
            outputs[name] = output

        return hook

    try:
        for name in layers:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()
