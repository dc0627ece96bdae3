"""RunSafety: what a training run needs to survive the real world. DiffusionModule adds it to
every fit (``configure_callbacks``), so the CLI and the Python API both get it.

- Atomic checkpoints: the strategy's plain TorchCheckpointIO becomes AtomicCheckpointIO (a kill
  during a write leaves the previous file, never a truncated one).
- SIGTERM / SIGINT (a scheduler's preemption, ``timeout``, Ctrl+C): the current step finishes,
  observers stop between UNet batches, ``last.ckpt`` is written, the loggers are closed, and the
  process exits with 128 + the signal number (143 / 130). A second Ctrl+C quits at once.
- Resume: TensorBoard history from the resumed step on is purged (a SessionLog START event at that
  step, as SummaryWriter's ``purge_step`` writes), so every tag's steps stay strictly increasing; and
  a run continued in its own checkpoint folder keeps its ModelCheckpoint bookkeeping even when the
  folder is now reached by another path (absolute vs relative, a moved run), so ``last.ckpt`` stays
  the newest state instead of Lightning starting ``last-v1.ckpt``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from typing_extensions import override

from diffprobe import interrupt
from diffprobe.checkpoint_io import AtomicCheckpointIO

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(SystemExit):
    """Training stopped on a signal after writing ``last.ckpt``; the exit status is 128 + signum."""

    def __init__(self, signum: int, checkpoint: str | None):
        super().__init__(128 + signum)
        self.signum, self.checkpoint = signum, checkpoint


# A Checkpoint subclass: Lightning runs checkpoint callbacks last, after every observer has
# finished (or given up on) the step, and after ModelCheckpoint.
class RunSafety(Checkpoint):
    def __init__(self) -> None:
        self._active = False
        self._previous_handlers: dict[int, Any] = {}
        self._handler = self._handle  # one bound method, so getsignal() can recognise it

    # ---- setup / teardown -----------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        interrupt.clear()
        self._active = True
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                current = signal.getsignal(signum)
                if current is not self._handler:
                    self._previous_handlers[signum] = current
                    signal.signal(signum, self._handler)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        self._deactivate()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        self._deactivate()

    def _deactivate(self) -> None:
        self._active = False
        interrupt.clear()
        for signum, previous in self._previous_handlers.items():
            if signal.getsignal(signum) is self._handler:
                signal.signal(signum, previous)

    def _handle(self, signum: int, frame) -> None:
        if not self._active:  # outside fit (Lightning may re-install us after teardown): behave as before
            previous = self._previous_handlers.get(signum, signal.SIG_DFL)
            if callable(previous):
                return previous(signum, frame)
            if previous != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if interrupt.stop_requested() is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: the user wants out now
        interrupt.request_stop(signum)
        print(
            f"diffprobe: {signal.Signals(signum).name} received: finishing this step, writing last.ckpt and stopping"
            + (" (Ctrl+C again to quit at once)" if signum == signal.SIGINT else ""),
            file=sys.stderr,
            flush=True,
        )

    # ---- stop on a signal ---------------------------------------------------------------------
    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._stop_if_requested(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._stop_if_requested(trainer)  # skip on_fit_end work (the export) of an interrupted run

    def _stop_if_requested(self, trainer: pl.Trainer) -> None:
        signum = interrupt.stop_requested()
        requested = signum is not None
        if trainer.world_size > 1:  # every rank must stop at the same step, or the others hang
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        signum = signum or signal.SIGTERM  # a rank that got no signal itself follows the others
        path = save_last_checkpoint(trainer)
        rank_zero_info(f"diffprobe: stopped by {signal.Signals(signum).name} at step {trainer.global_step}; resume with --ckpt_path {path}")
        raise RunInterrupted(signum, path)

    # ---- resume ---------------------------------------------------------------------------------
    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        step = int(checkpoint.get("global_step", 0))
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    # Hide every event at or past the resumed step: the resumed run writes them again.
                    logger.experiment.file_writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
        if trainer.ckpt_path:
            _continue_checkpoint_bookkeeping(trainer, checkpoint, Path(trainer.ckpt_path))


def save_last_checkpoint(trainer: pl.Trainer) -> str:
    """Write ``last.ckpt`` of the current step through every ModelCheckpoint (or into the run's
    ``checkpoints/`` folder when there is none); collective: every rank calls it."""
    written = None
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
            continue
        if callback._last_global_step_saved == trainer.global_step and callback.last_model_path:
            written = callback.last_model_path  # ModelCheckpoint already saved this very step
        elif callback.save_last:
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
            written = callback.last_model_path
        else:
            written = os.path.join(callback.dirpath, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)
            trainer.save_checkpoint(written)
    if written is None:
        written = os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints", "last.ckpt")
        trainer.save_checkpoint(written)
    return written


def _continue_checkpoint_bookkeeping(trainer: pl.Trainer, checkpoint: dict[str, Any], ckpt_path: Path) -> None:
    """A run resumed from its own checkpoint folder keeps ModelCheckpoint's paths (last, best,
    top-k), rewritten to the folder's current spelling; otherwise Lightning drops them ("dirpath has
    changed") and writes ``last-v1.ckpt`` beside a ``last.ckpt`` that is never updated again."""
    states = checkpoint.get("callbacks", {})
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
            continue
        state = states.get(callback.state_key)
        if not state or not state.get("dirpath") or state["dirpath"] == callback.dirpath:
            continue
        if ckpt_path.resolve().parent != Path(callback.dirpath).resolve():
            continue  # a checkpoint from elsewhere: a new run that starts from its state
        old, new = str(state["dirpath"]), str(callback.dirpath)

        def moved(path, old=old, new=new):
            return new + path[len(old) :] if isinstance(path, str) and path.startswith(old) else path

        state.update(
            dirpath=new,
            best_model_path=moved(state.get("best_model_path")),
            kth_best_model_path=moved(state.get("kth_best_model_path")),
            last_model_path=moved(state.get("last_model_path")),
            best_k_models={moved(k): v for k, v in state.get("best_k_models", {}).items()},
        )
