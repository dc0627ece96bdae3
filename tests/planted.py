"""Stand-in UNets with a known answer, for testing the explanation tools.

- ``PlantedStepUNet``: its DDIM step output x_{t-1} reads the input ONLY inside ``region``:
  inside, x_{t-1} = x_t (each position recovered from itself); outside, x_{t-1} = W (x_t * region),
  a fixed random positive mix of the region's input (nothing there comes from its own position).
  Its eps is solved from the DDIM update, so the scheduler step gives exactly that x_{t-1}. A
  faithful saliency method (DF-RISE, LIME, insertion/deletion) must put its mass in the region.
- ``PlantedBlockUNet``: a block named ``down_blocks.0.resnets.0`` whose activation is non-zero only
  inside the region and whose gradient of eps.sum() is positive: DF-CAM must light up the region.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, prediction_type="epsilon")


def planted_region(size: int = 16) -> torch.Tensor:
    """(size, size) bool: the top-left quarter."""
    region = torch.zeros(size, size, dtype=torch.bool)
    region[: size // 2, : size // 2] = True
    return region


class _Output:
    def __init__(self, sample: torch.Tensor):
        self.sample = sample


class PlantedStepUNet(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, sample_size: int = 16, in_channels: int = 3, num_inference_steps: int = 20, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        positions = sample_size * sample_size
        mixing = torch.rand(positions, positions, generator=generator) ** 4  # positive, uneven
        self.register_buffer("mixing", mixing / mixing.sum(1, keepdim=True) * 4)
        self.register_buffer("region", planted_region(sample_size).float())
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device/dtype
        self.alphas = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod

    def planted_prev(self, x: torch.Tensor) -> torch.Tensor:
        mixed = ((x * self.region).flatten(2) @ self.mixing.T).view_as(x)  # (B, C, HW) mixed over positions
        return self.region * x + (1 - self.region) * mixed

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states=None, **_) -> _Output:
        t = int(timestep)
        prev_t = t - 1000 // self.config.num_inference_steps
        a_t = self.alphas[t]
        a_prev = self.alphas[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        # DDIM (eta = 0): prev = c1 x + c2 eps  =>  eps = (prev - c1 x) / c2
        c1 = (a_prev / a_t).sqrt()
        c2 = (1 - a_prev).sqrt() - (a_prev * (1 - a_t) / a_t).sqrt()
        return _Output((self.planted_prev(sample) - c1 * sample) / c2 + 0 * self.anchor)


class _RegionActivation(nn.Module):
    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.region * (1 + x.tanh() ** 2)  # bounded, so a sampling run stays finite


class _Block(nn.Module):
    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.resnets = nn.ModuleList([_RegionActivation(region)])


class PlantedBlockUNet(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, sample_size: int = 16, in_channels: int = 3):
        super().__init__()
        self.down_blocks = nn.ModuleList([_Block(planted_region(sample_size))])
        self.anchor = nn.Parameter(torch.ones(()))

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states=None, **_) -> _Output:
        activation = self.down_blocks[0].resnets[0](sample)
        return _Output(activation.mean(1, keepdim=True).expand_as(sample) * self.anchor)


class _InputBlock(nn.Module):
    """The input itself, or the input weighted by fixed spatial ramps (``position``): its mean over
    positions then carries where the object is, which the mean-pooled input does not."""

    def __init__(self, size: int, position: bool):
        super().__init__()
        ramp = torch.linspace(-1, 1, size)
        ramps = torch.stack([ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size)])  # (2, H, W): x then y
        self.register_buffer("ramps", ramps)
        self.position = position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.position:
            return x
        # (B, C, H, W) -> (B, 2C, H, W): each channel times the x ramp and the y ramp
        return (x.unsqueeze(2) * self.ramps).flatten(1, 2)


class PlantedFeatureUNet(ModelMixin, ConfigMixin):
    """A stand-in whose one probed block, ``mid_block``, outputs either the input itself (its probe
    can only match the input baseline: no gain) or the input weighted by spatial ramps (its pooled
    features locate the object: ConceptShapes' position is learned where the noise leaves it)."""

    @register_to_config
    def __init__(self, sample_size: int = 16, in_channels: int = 3, position: bool = False):
        super().__init__()
        self.mid_block = _InputBlock(sample_size, position)
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states=None, **_) -> _Output:
        return _Output(self.mid_block(sample)[:, : sample.shape[1]] + 0 * self.anchor)
