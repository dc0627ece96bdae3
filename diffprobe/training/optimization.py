"""The DiffusionModule's optimizer and learning-rate schedule: AdamW (the fused kernel on a GPU,
torch's default elsewhere, also for an optimizer resumed from a checkpoint written on another
device) over the trained weights, and OnlineProbes' heads in a second group at their own rate."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.optimization import get_scheduler


def adamw_and_schedule(trained: list[torch.nn.Parameter], heads: torch.nn.Module | None, heads_learning_rate: float | None, hparams, trainer) -> dict:
    """``configure_optimizers``' answer for a DiffusionModule: AdamW over the ``trained`` weights
    with diffusers' cosine or constant schedule with warm-up (``hparams``: learning_rate,
    adam_betas, weight_decay, lr_schedule, warmup_steps); OnlineProbes' ``heads``, when attached,
    in a second group at their own constant rate. ``trainer``: the attached Trainer, or None."""
    groups: list[dict[str, Any]] = [{"params": trained}]
    if heads is not None:
        groups.append({"params": list(heads.parameters()), "lr": heads_learning_rate, "weight_decay": 0.0, "betas": (0.9, 0.999)})
    optimizer = torch.optim.AdamW(
        groups, lr=hparams.learning_rate, betas=tuple(hparams.adam_betas), weight_decay=hparams.weight_decay, fused=fused_on_gpu(groups, trainer)
    )
    name = "cosine" if hparams.lr_schedule == "cosine" else "constant_with_warmup"
    total = int(trainer.estimated_stepping_batches) if trainer is not None else 1
    schedule = get_scheduler(name, optimizer, num_warmup_steps=hparams.warmup_steps, num_training_steps=max(total, 1))
    if heads is not None:  # the heads keep their own constant rate: no warm-up or decay
        schedule.lr_lambdas[1] = _constant
        optimizer.param_groups[1]["lr"] = heads_learning_rate
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _constant(step: int) -> float:
    return 1.0


def fused_on_gpu(groups, trainer) -> bool | None:
    """AdamW's fused kernel (one launch for every parameter's update) when every parameter is on a
    GPU and no gradient scaler runs ("16-mixed": Lightning would then skip unscaling before the
    clipping); torch's default implementation otherwise."""
    if trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None:
        return None
    parameters = [p for group in groups for p in group["params"]]
    return True if parameters and all(p.is_cuda for p in parameters) else None


def use_device_implementation(optimizer: torch.optim.AdamW, trainer) -> None:
    """A resumed optimizer takes its implementation from the checkpoint's groups: set the one this
    device runs (a run begun on a CPU gets the fused kernel on a GPU, one begun on a GPU the
    default one on a CPU), with each parameter's step count where that implementation keeps it."""
    fused = fused_on_gpu(optimizer.param_groups, trainer)
    for group in optimizer.param_groups:
        if bool(group.get("fused")) == bool(fused):
            continue
        group["fused"], group["foreach"] = fused, None
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if torch.is_tensor(state.get("step")):  # fused: on the parameter's device; default: on the CPU
                state["step"] = state["step"].to(device=parameter.device if fused else "cpu", dtype=torch.float32)
