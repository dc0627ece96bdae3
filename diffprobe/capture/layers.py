"""Which layers of a UNet to observe, and the one place their names are checked.

Names are ``unet.named_modules()`` names. :func:`default_layers` are the resolution stages
(probes, activation capture), :func:`block_layers` the finer ResNet / attention / sampler layers
(DF-CAM). Every observer resolves the names it is given through :func:`find_layers`, so a wrong
name gets the same error wherever it is passed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from diffprobe.diffusion.unet import UNet

# ResNets, attention / transformer blocks and samplers of diffusers' UNet blocks (DF-CAM's layers).
_BLOCK_LAYER = re.compile(r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(resnets|attentions|downsamplers|upsamplers)\.\d+$")
_STAGE_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def default_layers(unet: UNet) -> list[str]:
    """Each down block, the mid block, each up block: the UNet's resolution stages."""
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    if getattr(unet, "mid_block", None) is not None:
        names.append("mid_block")
    return names + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]


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


def find_layers(
    unet: nn.Module,
    names: Sequence[str],
    *,
    among: Mapping[str, nn.Module] | None = None,
    what: str = "module",
    choices: Sequence[str] | None = None,
    who: str | None = None,
) -> dict[str, nn.Module]:
    """name -> module for each of ``names``, in their order.

    ``among``: the modules a name may refer to (default: every named module of the UNet except
    the UNet itself); ``what`` names them in the error. The ValueError lists ``choices`` (default:
    the block names of :func:`default_layers`, or every name of ``among``) and starts with
    ``who`` (e.g. the callback whose setting it was) when given.
    """
    candidates = dict(unet.named_modules()) if among is None else dict(among)
    candidates.pop("", None)  # the UNet itself is not one of its layers
    missing = [name for name in names if name not in candidates]
    if missing:
        if choices is None:
            choices = default_layers(unet) if among is None else sorted(candidates)
        anything = " (any name from unet.named_modules() works)" if among is None else ""
        prefix = f"{who}: " if who else ""
        raise ValueError(f"{prefix}UNet has no {what}(s) {missing}; choose from {list(choices)}{anything}")
    return {name: candidates[name] for name in names}


def check_layers(unet: nn.Module, names: Sequence[str], *, choices: Sequence[str] | None = None, who: str | None = None) -> list[str]:
    """``names`` as a list, after checking that each is a module of the UNet (otherwise the
    ValueError of :func:`find_layers`)."""
    return list(find_layers(unet, names, choices=choices, who=who))
