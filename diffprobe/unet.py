"""Build or load diffusers UNets: named presets, inline configs, pretrained folders or hub ids."""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

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
# caption embeddings of diffprobe.captions.CaptionEncoder.
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

UNet = UNet2DModel | UNet2DConditionModel


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


@dataclass
class PretrainedUNet:
    """What ``load_pretrained`` found: the UNet, and the scheduler stored beside it (if any)."""

    unet: UNet
    scheduler: DDPMScheduler | None
    source: str


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def load_pretrained(
    name_or_path: str, *, conditional: bool, in_channels: int | None = None, image_size: int | None = None
) -> PretrainedUNet:
    """Load a diffusers UNet (and its scheduler config when present) for fine-tuning.

    Accepts a pipeline folder (with ``unet/`` and ``scheduler/``), a bare UNet folder, or a hub id
    such as ``google/ddpm-cifar10-32`` (downloaded by diffusers; needs network once).
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        unet_dir = path / "unet" if (path / "unet" / "config.json").exists() else path
        config_file = unet_dir / "config.json"
        if not config_file.exists():
            raise FileNotFoundError(
                f"pretrained folder {path} has no config.json (nor unet/config.json): it is not a diffusers "
                "UNet or pipeline folder. Point --model.pretrained at a folder written by save_pretrained."
            )
        class_name = json.loads(config_file.read_text()).get("_class_name")
        subfolder = None
        root = str(unet_dir)
        # A pipeline folder keeps its scheduler in scheduler/; `hf download` of a bare repo at the root.
        scheduler_dir = next((d for d in (path / "scheduler", path) if (d / "scheduler_config.json").exists()), None)
    elif _looks_like_hub_id(name_or_path):
        root, subfolder, class_name = name_or_path, "unet", None
        scheduler_dir = None
    else:
        raise FileNotFoundError(
            f"pretrained UNet {name_or_path!r} not found: no such folder, and it is not a hub id of the form "
            "'owner/name'. Give a diffusers folder (save_pretrained) or a hub id such as google/ddpm-cifar10-32."
        )

    expected = UNet2DConditionModel if conditional else UNet2DModel
    if class_name is not None and class_name != expected.__name__:
        raise ValueError(
            f"{name_or_path} holds a {class_name}, but this model needs a {expected.__name__} "
            f"(conditional={conditional}). Point --model.pretrained at a {expected.__name__} folder."
        )
    try:
        unet = expected.from_pretrained(root, subfolder=subfolder)
    except (ValueError, RuntimeError) as error:  # weights whose shapes do not fit the config
        first_lines = "\n".join(str(error).splitlines()[:3])
        raise ValueError(
            f"the weights in {name_or_path} do not fit its UNet config (a UNet of another shape?):\n{first_lines}\n"
            "Re-save the UNet with save_pretrained so config.json and the weights match."
        ) from error
    except OSError as error:
        if subfolder is None:
            raise
        # Hub pipelines keep the UNet in unet/; plain UNet repos keep it at the root.
        try:
            unet = expected.from_pretrained(root)
        except OSError:
            raise OSError(
                f"could not load {expected.__name__} from {name_or_path!r}: {error}. Without network, download "
                f"it first (e.g. `hf download {name_or_path} --local-dir weights/{name_or_path.split('/')[-1]}`) "
                "and point --model.pretrained at that folder."
            ) from error

    if in_channels is not None and unet.config.in_channels != in_channels:
        raise ValueError(
            f"pretrained UNet {name_or_path} takes {unet.config.in_channels}-channel images but the data gives "
            f"{in_channels} channels; set --data.channels {unet.config.in_channels} or use another UNet."
        )
    if image_size is not None:
        check_image_size(image_size, dict(unet.config))

    scheduler = None
    if scheduler_dir is not None:
        scheduler = DDPMScheduler.from_pretrained(scheduler_dir)
    elif subfolder is not None:
        try:
            scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
        except OSError:
            scheduler = None
    return PretrainedUNet(unet=unet, scheduler=scheduler, source=name_or_path)


def fine_tuning_unet(
    pretrained: str,
    *,
    conditional: bool,
    image_size: int,
    in_channels: int,
    noise_process: dict[str, Any],
    warn: Callable[[str], None] = warnings.warn,
) -> PretrainedUNet:
    """:func:`load_pretrained`, made ready to train at ``image_size`` (its ``sample_size`` set to it).

    The stored scheduler stays the noise process (the weights were trained with it); where it
    differs from the configured ``noise_process`` (e.g. ``num_train_timesteps``,
    ``prediction_type``), ``warn`` says so. ``warn`` is a parameter so that a Lightning module
    can warn on rank zero only without the core importing Lightning.
    """
    loaded = load_pretrained(pretrained, conditional=conditional, in_channels=in_channels, image_size=image_size)
    if loaded.unet.config.sample_size != image_size:
        warn(f"pretrained UNet was made for {loaded.unet.config.sample_size}px images; fine-tuning at {image_size}px")
        loaded.unet.register_to_config(sample_size=image_size)
    if loaded.scheduler is not None:
        stored = loaded.scheduler.config
        differ = {k: stored[k] for k, v in noise_process.items() if stored[k] != v}
        if differ:
            warn(f"using the pretrained folder's noise process {differ} instead of the configured {noise_process}")
    # from_pretrained returns the UNet in eval mode, and Lightning keeps a submodule's mode as it
    # finds it: without this, fine-tuning would run with dropout off.
    loaded.unet.train()
    return loaded


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
