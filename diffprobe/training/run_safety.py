"""RunSafety: what a training run needs to survive the real world. DiffusionModule adds it to
every fit (``configure_callbacks``), so the CLI and the Python API both get it.

- Atomic checkpoints: the strategy's plain TorchCheckpointIO becomes AtomicCheckpointIO (a kill
  during a write leaves the previous file, never a truncated one).
- SIGTERM / SIGINT (a scheduler's preemption, ``timeout``, Ctrl+C): the current step finishes,
  observers stop between UNet batches, ``last.ckpt`` is written, the loggers are closed, and the
  process exits with 128 + the signal number (143 / 130). A second Ctrl+C quits at once.
- SLURM's requeue signal (under Lightning's ``SLURMEnvironment`` with ``auto_requeue``, SIGUSR1 by
  default): the same stop, then ``scontrol requeue`` of the job, instead of Lightning's own handler
  (which writes an ``hpc_ckpt_<n>.ckpt`` beside the run's ``last.ckpt``). The requeued job runs the
  same command; with ``--ckpt_path last`` it continues from that ``last.ckpt``.
- Resume: TensorBoard history from the resumed step on is purged (a SessionLog START event at that
  step, as SummaryWriter's ``purge_step`` writes), so every tag's steps stay strictly increasing;
  what probe.py commands wrote into the run past that step is written again after it (their events
  files end in ``.probe``), so an offline measurement is never hidden by a resume; and
  a run continued in its own checkpoint folder keeps its ModelCheckpoint bookkeeping even when the
  folder is now reached by another path (absolute vs relative, a moved run), so ``last.ckpt`` stays
  the newest state instead of Lightning starting ``last-v1.ckpt``.
"""

from __future__ import annotations

import os
import signal
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
from diffprobe.report import tb
from diffprobe.report.writer import offline_events
from diffprobe.training.checkpoint_io import AtomicCheckpointIO
from diffprobe.training.slurm import requeue_slurm_job, slurm_requeue_signal
from diffprobe.training.tensorboard import tensorboard_writer

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
        self._stopped: tuple[int, str] | None = None  # (signal, last.ckpt) once the stop is written
        self._requeue_signal: int | None = None  # SLURM's, when Lightning's auto-requeue is on
        self._requeue_job = False

    # ---- setup / teardown -----------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        interrupt.clear()
        self._active, self._stopped, self._requeue_job = True, None, False
        self._requeue_signal = slurm_requeue_signal(trainer)
        # Installed before Lightning registers its own: it then leaves the requeue signal to us.
        self._install_handlers()
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Lightning would log the hyper-parameters with its own bookkeeping (_instantiator)
                # and a placeholder hp_metric of -1; on_train_start logs them cleanly instead.
                logger._default_hp_metric = False

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        # Lightning wrapped our SIGTERM handler in its own after setup; its handler makes the loop
        # raise SIGTERMException (exit status 0, no checkpoint) and, under DDP, broadcasts from
        # inside the handler. Ours alone decides; Lightning's teardown restores what it found. A
        # SIGTERM that came while the observers' on_train_start ran reached both handlers: ours
        # stops at the end of this step, so Lightning's flag would only turn that into an exit 0.
        self._install_handlers()
        trainer._signal_connector.received_sigterm = False
        writer = tensorboard_writer(trainer)
        # A run folder gets its settings once: a run continued in its own folder already has them.
        continued = trainer.ckpt_path is not None and trainer.log_dir is not None and Path(trainer.ckpt_path).resolve().parent.parent == Path(trainer.log_dir).resolve()
        if writer is not None and trainer.is_global_zero and not continued:
            tb.log_hyperparameters(writer, {k: v for k, v in pl_module.hparams.items() if not k.startswith("_")}, [tb.LOSS])

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (*STOP_SIGNALS, *([self._requeue_signal] if self._requeue_signal is not None else [])):
            current = signal.getsignal(signum)
            if current is not self._handler:
                self._previous_handlers.setdefault(signum, current)
                signal.signal(signum, self._handler)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        # The last hook of a fit, after Lightning restored its handlers: ours go, the previous come back.
        self._deactivate()
        if self._stopped is not None:
            signum, path = self._stopped
            self._stopped = None
            if self._requeue_job and trainer.is_global_zero:
                # Lightning closes the loggers after this hook; a requeued job may get SLURM's
                # SIGTERM before that, so TensorBoard is flushed first.
                for logger in trainer.loggers:
                    logger.finalize("success")
                requeue_slurm_job()
            raise RunInterrupted(signum, path)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        self._deactivate()

    def _deactivate(self) -> None:
        self._active = False
        interrupt.clear()
        for signum, previous in self._previous_handlers.items():
            if signal.getsignal(signum) is self._handler:
                signal.signal(signum, previous)
        self._previous_handlers = {}

    def _handle(self, signum: int, frame) -> None:
        if not self._active:  # after an exception Lightning may re-install us: behave as before
            previous = self._previous_handlers.get(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            if callable(previous):
                return previous(signum, frame)
            if previous != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if interrupt.stop_requested() is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: the user wants out now
        interrupt.request_stop(signum)
        self._requeue_job = self._requeue_job or signum == self._requeue_signal
        # os.write, not print: a print interrupted inside another write raises "reentrant call".
        hint = " (Ctrl+C again to quit at once)" if signum == signal.SIGINT else ""
        then = "requeueing the job" if signum == self._requeue_signal else "stopping"
        os.write(2, f"diffprobe: {signal.Signals(signum).name} received: finishing this step, writing last.ckpt and {then}{hint}\n".encode())

    # ---- stop on a signal ---------------------------------------------------------------------
    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._stopped is not None:  # should_stop was not honoured (min_steps): stop now
            raise RunInterrupted(*self._stopped)
        if trainer.fit_loop._should_accumulate():
            return  # inside a gradient-accumulation window (the same on every rank): stop at its end, or its gradients are lost
        if self._stop_requested(trainer):
            # The step's own logging (loss, lr) still happens after this hook; the observers skip
            # on_train_end and ExportDiffusers skips the export; teardown raises RunInterrupted.
            self._stop(trainer)
            trainer.should_stop = True

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self._stopped is None and self._stop_requested(trainer):
            self._stop(trainer)
        elif self._stopped is None:
            # Lightning saves last.ckpt at the end only when nothing was saved before: a run that
            # ends between two checkpoint steps would leave last.ckpt behind the final weights.
            for callback in _model_checkpoints(trainer):
                if callback.save_last and callback._last_global_step_saved != trainer.global_step:
                    _save_last(trainer, callback)

    def _stop_requested(self, trainer: pl.Trainer) -> bool:
        requested = interrupt.stop_requested() is not None
        if trainer.world_size > 1:  # every rank must stop at the same step, or the others hang
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        return requested

    def _stop(self, trainer: pl.Trainer) -> None:
        signum = interrupt.stop_requested() or signal.SIGTERM  # a rank that got no signal follows the others
        interrupt.request_stop(signum)  # every rank: observers and the export stand down
        path = save_last_checkpoint(trainer)
        self._stopped = (signum, path)
        if trainer.world_size > 1:  # SLURM signals every task; the job is requeued if any got it
            self._requeue_job = trainer.strategy.reduce_boolean_decision(self._requeue_job, all=False)
        rank_zero_info(f"diffprobe: stopped by {signal.Signals(signum).name} at step {trainer.global_step}; resume with --ckpt_path {path}")

    # ---- resume ---------------------------------------------------------------------------------
    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        step = int(checkpoint.get("global_step", 0))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # hp_metric is a placeholder logged at step 0 after this point: it would repeat step 0.
                logger._default_hp_metric = False
                if trainer.is_global_zero:
                    # Hide every event at or past the resumed step: the resumed run writes them again.
                    # TensorBoard treats a run's first SessionLog.START as the session's start, not a
                    # restart, and purges only on later ones: the first of these two may be that one.
                    restart = Event(step=step, session_log=SessionLog(status=SessionLog.START))
                    logger.experiment.file_writer.add_event(restart)
                    logger.experiment.file_writer.add_event(restart)
                    # What probe.py commands logged at or past this step is not the run's to hide:
                    # written again after the restart, it stays visible (their tables say it is done).
                    for event in offline_events(logger.log_dir, step):
                        logger.experiment.file_writer.add_event(event)
        if trainer.ckpt_path:
            _continue_checkpoint_bookkeeping(trainer, checkpoint, Path(trainer.ckpt_path))


def _model_checkpoints(trainer: pl.Trainer) -> list[ModelCheckpoint]:
    return [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath is not None]


def _last_path(callback: ModelCheckpoint) -> str:
    if callback.dirpath is None:  # _model_checkpoints keeps only the callbacks that have a folder
        raise ValueError("a ModelCheckpoint without a dirpath has no last checkpoint")
    return os.path.join(callback.dirpath, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)


def _save_last(trainer: pl.Trainer, callback: ModelCheckpoint) -> str:
    if callback.save_last == "link":  # a link would point at an older top-k file: write the real state
        path = callback.last_model_path = _last_path(callback)
        trainer.save_checkpoint(path, weights_only=False)
    else:
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
    return callback.last_model_path


def save_last_checkpoint(trainer: pl.Trainer) -> str:
    """Write ``last.ckpt`` of the current step through every ModelCheckpoint (or into the run's
    ``checkpoints/`` folder when there is none); collective: every rank calls it."""
    written = None
    for callback in _model_checkpoints(trainer):
        if callback._last_global_step_saved == trainer.global_step and callback.last_model_path:
            written = callback.last_model_path  # ModelCheckpoint already saved this very step
        elif callback.save_last:
            written = _save_last(trainer, callback)
        else:
            written = _last_path(callback)
            trainer.save_checkpoint(written, weights_only=False)
    if written is None:
        written = os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints", "last.ckpt")
        trainer.save_checkpoint(written, weights_only=False)
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
