"""DF-CAM (R2): Grad-CAM at every UNet block for one denoising step.

For each block layer (ResNet, attention / transformer block, down- or up-sampler) the activation A
and its gradient G of ``eps.sum()`` (no class target) at the step. Under classifier-free guidance
both are combined like the output: A = A_u + w (A_c - A_u), the same for G. Per layer:
alpha_k = spatial mean of G_k, map = ReLU(sum_k alpha_k A_k), upsampled to x_t's resolution and
min-max normalised. The DF-CAM map is the sum of the per-layer maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffprobe.capture.gradients import block_layers, capture_outputs
from diffprobe.diffusion.sampling import cfg_combine
from diffprobe.explain.model import ExplainModel
from diffprobe.explain.run import ExplainedStep, normalise_map, resize_map


@dataclass
class CamResult:
    """layer_maps: layer name -> (h, w) in [0, 1] at x_t's resolution, in forward order;
    total (h, w): their sum (not normalised; the overlays normalise it)."""

    layer_maps: dict[str, torch.Tensor]
    total: torch.Tensor


def df_cam(model: ExplainModel, step: ExplainedStep, *, layers: Sequence[str] | None = None) -> CamResult:
    """Per-layer Grad-CAM maps of ``step`` (every block layer by default) and their sum."""
    layers = list(layers) if layers is not None else block_layers(model.unet)
    if not layers:
        raise ValueError("this UNet has no block layers to explain (no down_blocks/mid_block/up_blocks resnets or attentions)")
    guided = step.prompt is not None and model.guidance_scale != 1.0
    with torch.enable_grad(), capture_outputs(model.unet, layers) as outputs:
        # x_t requires grad so the graph exists even though the UNet's parameters are frozen.
        eps = model.guided(step.x_t.detach().clone().requires_grad_(True), step.t, step.prompt)
        missing = [name for name in layers if name not in outputs]
        if missing:
            raise ValueError(f"layer(s) {missing} did not run in the UNet's forward pass; choose from {block_layers(model.unet)}")
        activations = [outputs[name] for name in layers]
        gradients = torch.autograd.grad(eps.float().sum(), activations, allow_unused=True)
    size = (int(step.x_t.shape[-2]), int(step.x_t.shape[-1]))
    layer_maps = {}
    for name, activation, gradient in zip(layers, activations, gradients):
        activation = activation.detach().float()
        gradient = torch.zeros_like(activation) if gradient is None else gradient.float()
        if guided:
            activation, gradient = cfg_combine(activation, model.guidance_scale), cfg_combine(gradient, model.guidance_scale)
        if activation.ndim != 4:
            raise ValueError(f"layer {name} outputs shape {tuple(activation.shape)}, not a (B, C, h, w) feature map; choose a block layer")
        alpha = gradient.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
        cam = (alpha * activation).sum(1)[0].clamp_min(0)
        layer_maps[name] = normalise_map(resize_map(cam, size)).cpu()
    total = torch.stack(list(layer_maps.values())).sum(0)
    return CamResult(layer_maps=layer_maps, total=total)
