"""Full block outputs of a UNet kept IN the autograd graph, for gradient methods (Grad-CAM).

    with capture_outputs(unet, ["mid_block.resnets.0"]) as outputs:
        eps = unet(x_t, t).sample
    grads = torch.autograd.grad(eps.sum(), list(outputs.values()))

``torch.autograd.grad`` (not ``.backward()``) leaves every parameter's ``.grad`` untouched.
Hooks are removed on exit, also on exceptions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

# ResNets, attention / transformer blocks and samplers of diffusers' UNet blocks (DF-CAM's layers).
_BLOCK_LAYER = re.compile(r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(resnets|attentions|downsamplers|upsamplers)\.\d+$")
_STAGE_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def block_layers(unet: nn.Module) -> list[str]:
    """Every ResNet, attention/transformer block, down- and up-sampler of the UNet, in the order a
    forward pass runs them (down path, mid block, up path)."""
    names = [name for name, _ in unet.named_modules() if _BLOCK_LAYER.match(name)]

    def order(name: str):
        parts = name.split(".")
        stage = _STAGE_ORDER[parts[0]]
        block = int(parts[1]) if stage != 1 else 0
        rest = parts[2:] if stage != 1 else parts[1:]
        sampler = rest[0] in ("downsamplers", "upsamplers")
        return stage, block, sampler, int(rest[1]), rest[0] == "attentions"

    # Within a block, diffusers runs resnet i then attention i; samplers come last.
    return sorted(names, key=order)


@contextmanager
def capture_outputs(unet: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output tensor of each named module (the first element when a module returns a
    tuple or a diffusers output), not detached. A module called twice keeps its last output."""
    modules = dict(unet.named_modules())
    missing = [n for n in layers if n not in modules or n == ""]
    if missing:
        raise ValueError(f"unknown layer(s) {missing}; this UNet's block layers are {block_layers(unet)}")
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
