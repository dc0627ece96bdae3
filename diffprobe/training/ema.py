"""AveragedWeights: the EMA of the trained weights, held as a submodule of the LightningModule.

The averages live in a frozen copy of the trained modules (``ema.copy.unet...`` in the state
dict), so Lightning sees them: they move with the module, are saved in ``state_dict`` and are
sharded with it under FSDP instead of a full replica per process outside the strategy's view.
The decay schedule (warm-up, step count) is diffusers' EMAModel, writing into that copy in place.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from torch import nn
from typing_extensions import override

from diffprobe.diffusion.model import upgrade_ema_state

# EMAModel state that is not the averages (those are the submodule's parameters).
SCHEDULE_KEYS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power")


class AveragedWeights(nn.Module):
    """Args: modules: name -> trained module (None entries are skipped), in the order of the
    parameters later passed to :meth:`step`; decay, use_ema_warmup, inv_gamma, power: EMAModel's
    schedule, ``min(decay, 1 - (1 + step / inv_gamma) ** -power)`` with warm-up."""

    def __init__(self, modules: dict[str, nn.Module | None], decay: float, use_ema_warmup: bool, inv_gamma: float, power: float):
        super().__init__()
        self.copy = nn.ModuleDict({name: copy.deepcopy(module) for name, module in modules.items() if module is not None})
        self.copy.requires_grad_(False)
        self.schedule = EMAModel([], decay=decay, use_ema_warmup=use_ema_warmup, inv_gamma=inv_gamma, power=power, foreach=True)
        self.schedule.shadow_params = list(self.copy.parameters())  # EMAModel updates the copy in place
        self._averages: list[torch.Tensor] | None = None  # the copy's parameters, listed once per placement

    # ---- what EMAModel exposes, for callers and tests --------------------------------------------
    @property
    def shadow_params(self) -> list[nn.Parameter]:
        return list(self.copy.parameters())

    @property
    def optimization_step(self) -> int:
        return self.schedule.optimization_step

    @property
    def cur_decay_value(self) -> float | None:
        return self.schedule.cur_decay_value

    @property
    def decay(self) -> float:
        return self.schedule.decay

    @torch.no_grad()
    def step(self, parameters: list[nn.Parameter]) -> None:
        parameters = list(parameters)
        if self._averages is None:  # walking the copy's module tree every step costs about a millisecond
            self._averages = list(self.copy.parameters())
        averages = self._averages
        if len(parameters) != len(averages):
            raise ValueError(f"EMA step with {len(parameters)} parameters for {len(averages)} averages")
        self.schedule.shadow_params = averages
        self.schedule.step(parameters)

    @override
    def _apply(self, fn, recurse: bool = True):
        # Lightning's "bf16-true" / "16-true" precisions cast the whole module: averages in half
        # precision stop moving (an update of (1 - 0.9999) x difference rounds away). Keep them fp32.
        super()._apply(fn, recurse)
        self._averages = None  # moved or cast: listed again at the next step
        for param in self.copy.parameters():
            if param.is_floating_point() and param.dtype != torch.float32:
                param.data = param.data.float()
        return self

    @contextmanager
    def swapped_into(self, parameters: list[nn.Parameter]):
        """The averaged weights in ``parameters`` for the duration; the originals come back exactly."""
        stored = [p.detach().clone() for p in parameters]
        with torch.no_grad():
            for param, average in zip(parameters, self.copy.parameters()):
                param.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, original in zip(parameters, stored):
                    param.copy_(original)

    # ---- checkpoint ------------------------------------------------------------------------------
    def schedule_state(self) -> dict[str, Any]:
        return {key: getattr(self.schedule, key) for key in SCHEDULE_KEYS}

    def load_schedule_state(self, state: dict[str, Any]) -> None:
        """The step count from the checkpoint; the settings (decay, warm-up) stay this run's, as
        given to the constructor, so a resumed run may change them."""
        self.schedule.optimization_step = int(state.get("optimization_step", 0))

    def upgrade_checkpoint(self, checkpoint: dict[str, Any], prefix: str) -> None:
        """Move an older checkpoint's EMA list into ``state_dict`` under ``prefix`` (the core's
        :func:`~diffprobe.diffusion.model.upgrade_ema_state`, with this copy's parameter names)."""
        upgrade_ema_state(checkpoint, [name for name, _ in self.copy.named_parameters()], prefix=f"{prefix}copy.")
