"""PeriodicObserver: the one WHEN of every callback that looks at the model on a step schedule.

SampleGrid, ProbeMonitor, AttentionRecorder and PredictionEvolution observe the model at the start
of training, after every ``every_n_steps`` optimizer steps and at the end. The rules that keep a
run's history right through resumes and interruptions live here, once:

- A step is observed at most once per run: the last observed step is in the checkpoint.
- A resumed run observes its resume step again only when it was due (step 0, a multiple of N, or
  the step observed last): RunSafety purges TensorBoard from the resume step on, so what the
  first session logged there is hidden and is written again with the same weights. Any other
  resume step gets no extra observation.
- A stop request (SIGTERM / SIGINT) cuts an observation short between UNet batches
  (``interrupt.Interrupted``); the partial observation is discarded and the step stays unobserved.
- Observing is rank-zero work on the module's own UNet (no collective calls).
- The UNet's forwards run in the training step's precision context (:meth:`unet_precision`: bf16
  autocast under ``bf16-mixed``, nothing under ``32-true``); probe fits and metrics stay float32.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from diffprobe import interrupt
from diffprobe.training.exact_resume import observer_random_streams
from diffprobe.training.tensorboard import has_tensorboard, tensorboard_writer

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


def refuse_sharded_strategy(trainer: pl.Trainer, who: str) -> None:
    """Rank-zero work on ``pl_module.unet`` needs the whole UNet in one process: under FSDP or
    model parallelism it would hang in a collective or see only a shard."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    if isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy)):
        raise ValueError(
            f"{who} runs the UNet on rank zero, which a sharded model ({type(trainer.strategy).__name__}) cannot do. "
            "Train with --trainer.strategy ddp, or remove the callback and run probe.py on the checkpoints."
        )


def adopt_unkeyed_state(checkpoint: dict[str, Any], old_key: str, new_key: str) -> None:
    """Checkpoints written before callbacks had a ``state_key`` keep their state under the class
    name: move it to the key (Lightning loads callback states right after on_load_checkpoint)."""
    states = checkpoint.get("callbacks", {})
    if new_key not in states and old_key in states:
        states[new_key] = states.pop(old_key)


class PeriodicObserver(pl.Callback):
    """Subclasses implement :meth:`observe` and, for a resumable state, :meth:`extra_state` /
    :meth:`load_extra_state`; :meth:`identity` names the arguments that tell two instances of the
    class apart in a checkpoint (its ``state_key``)."""

    needs_tensorboard = True

    def __init__(self, every_n_steps: int):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.last_step = -1

    # ---- identity and state ---------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        # Not the cadence: a resumed run may observe more or less often and keeps its history.
        return {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**self.identity())

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, **self.extra_state()}

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        adopt_unkeyed_state(checkpoint, type(self).__qualname__, self.state_key)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = int(state_dict.get("last_step", self.last_step))
        self.load_extra_state(state_dict)

    # ---- setup ----------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.check_trainer(trainer)

    def check_trainer(self, trainer: pl.Trainer) -> None:
        """Raise ValueError when this trainer cannot run the observer (train.py calls it before fit)."""
        refuse_sharded_strategy(trainer, type(self).__name__)
        if self.needs_tensorboard and not has_tensorboard(trainer):
            raise ValueError(
                f"{type(self).__name__} writes to TensorBoard, and this Trainer has no TensorBoardLogger. Add one "
                "(train.py has one by default; --trainer.logger lightning.pytorch.loggers.TensorBoardLogger) or "
                "remove the callback."
            )

    def writer(self, trainer: pl.Trainer) -> SummaryWriter:
        """The run's SummaryWriter (:meth:`check_trainer` made sure that there is one)."""
        writer = tensorboard_writer(trainer)
        if writer is None:
            raise ValueError(f"{type(self).__name__} writes to TensorBoard, and this Trainer has no TensorBoardLogger")
        return writer

    # ---- when -----------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps == 0 or step == self.last_step:
            self._observe(trainer, pl_module, again=True)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._observe(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._observe(trainer, pl_module)

    def _observe(self, trainer: pl.Trainer, pl_module, again: bool = False) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or interrupt.stop_requested() is not None:
            return
        if step == self.last_step and not again:
            return
        try:
            with observer_random_streams():  # observing must not move the training's random streams
                self.observe(trainer, pl_module, step)
        except interrupt.Interrupted:
            rank_zero_info(f"diffprobe: {type(self).__name__} at step {step} was stopped by a signal; discarded")
            return
        self.last_step = step

    def observe(self, trainer: pl.Trainer, pl_module, step: int) -> None:
        """Look at the model now and log what was seen at ``step`` (global rank zero only)."""
        raise NotImplementedError

    @staticmethod
    def unet_precision(trainer: pl.Trainer) -> Callable[[], AbstractContextManager]:
        """The context Lightning runs the training forward in (its precision plugin's): observers
        run the UNet as it trains, at its speed on a GPU (bf16 autocast under ``bf16-mixed``)."""
        return trainer.precision_plugin.forward_context


class TimestepGridObserver(PeriodicObserver):
    """An observer that looks at the model on a grid of timesteps with one set of weights
    (AttentionRecorder, PredictionEvolution): a resumed run keeps its t grid (the state) and the
    weights tell two instances apart (the state key)."""

    timesteps: list[int] | None
    weights: str

    @override
    def identity(self) -> dict[str, Any]:
        return {"weights": self.weights}

    @override
    def extra_state(self) -> dict[str, Any]:
        return {"timesteps": self.timesteps}

    @override
    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.timesteps = state.get("timesteps", self.timesteps)
