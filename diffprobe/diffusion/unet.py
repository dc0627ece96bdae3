"""Build diffusers UNets: named presets and inline configs (``diffusion.folders`` loads pretrained ones)."""

from __future__ import annotations

import inspect
from typing import Any, TypeAlias

from diffusers import UNet2DConditionModel, UNet2DModel

# Unconditional presets (UNet2DModel keyword arguments).
UNCONDITIONAL_PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized: 0.63M parameters, self-attention at the middle resolution and in the mid block.
    "tiny": dict(
        block_out_channels=(24, 48, 48),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=16,
    ),
    # The exact architecture of google/ddpm-cifar10-32 (Ho et al. 2020), 35.7M parameters.
    "ddpm-cifar10": dict(
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
        norm_eps=1e-6,
        attention_head_dim=None,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        act_fn="silu",
        center_input_sample=False,
        mid_block_scale_factor=1,
        time_embedding_type="positional",
    ),
}

# Concept-conditional presets (UNet2DConditionModel keyword arguments); cross-attention reads the
# caption embeddings of diffprobe.diffusion.captions.CaptionEncoder.
CONDITIONAL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(  # 0.80M parameters
        block_out_channels=(24, 48, 48),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
        cross_attention_dim=64,
    ),
    "small": dict(
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=8,
        cross_attention_dim=128,
    ),
}

UNet: TypeAlias = UNet2DModel | UNet2DConditionModel


def downsample_factor(unet_config: dict[str, Any]) -> int:
    """How many times the UNet halves the image: 2 ** (number of down blocks - 1)."""
    return 2 ** (len(unet_config["down_block_types"]) - 1)


def check_image_size(image_size: int, unet_config: dict[str, Any]) -> None:
    factor = downsample_factor(unet_config)
    if image_size % factor != 0 or image_size < factor:
        raise ValueError(
            f"image_size {image_size} is not divisible by {factor}: this UNet downsamples "
            f"{len(unet_config['down_block_types']) - 1} times. Use an image size that is a multiple of {factor} "
            "(e.g. --data.image_size 16, 32 or 64) or a UNet with fewer down blocks."
        )


def build_unet(
    preset: str | None,
    *,
    conditional: bool,
    image_size: int,
    in_channels: int = 3,
    overrides: dict[str, Any] | None = None,
) -> UNet:
    """A freshly initialised UNet from a preset name plus inline overrides of any config key
    (``preset=None``: the overrides are the whole config, as stored in a checkpoint)."""
    presets = CONDITIONAL_PRESETS if conditional else UNCONDITIONAL_PRESETS
    if preset is not None and preset not in presets:
        kind = "conditional" if conditional else "unconditional"
        raise ValueError(f"unknown {kind} UNet preset {preset!r}; choose one of {sorted(presets)}")
    base = presets[preset] if preset is not None else {}
    config = {**base, "sample_size": image_size, "in_channels": in_channels, "out_channels": in_channels}
    # Keys starting with "_" are diffusers' bookkeeping (_class_name, _diffusers_version...).
    config.update({k: v for k, v in (overrides or {}).items() if not k.startswith("_")})
    check_image_size(image_size, config)
    cls = UNet2DConditionModel if conditional else UNet2DModel
    unknown = set(config) - set(inspect.signature(cls.__init__).parameters)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} config keys {sorted(unknown)}; see diffusers' {cls.__name__} docs")
    return cls(**config)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
