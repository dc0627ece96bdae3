"""LazyWriter: the one TensorBoard writer of every ``probe.py`` command.

Opened at its first write, so a command that is refused (or writes nothing) leaves no events file;
always a new events file beside the run's own, so nothing a run or an earlier command wrote is
touched. Without a log directory every write is skipped. Its files end in ``.probe``
(:data:`OFFLINE_EVENTS_SUFFIX`): a resumed training run hides its own history from the resume step
on, and re-writes what these files hold past that step so that it stays visible
(:func:`offline_events`, used by the training layer's RunSafety).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


# The suffix of every events file a probe.py command writes (TensorBoard reads any name with "tfevents").
OFFLINE_EVENTS_SUFFIX = ".probe"


def offline_events(logdir: str | Path, from_step: int) -> Iterator[Any]:
    """The summary events (tensorboard ``Event`` protos) at ``from_step`` or later in the events files
    probe.py commands wrote into ``logdir``, file by file in the order TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for path in sorted(Path(logdir).glob(f"*tfevents*{OFFLINE_EVENTS_SUFFIX}")):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("summary") and event.step >= from_step:
                yield event


class LazyWriter:
    def __init__(self, logdir: str | Path | None):
        self.logdir = Path(logdir) if logdir is not None else None
        self._writer: SummaryWriter | None = None

    @property
    def active(self) -> bool:
        return self.logdir is not None

    @property
    def writer(self):
        """The SummaryWriter (made now if it was not yet); None without a log directory."""
        if self._writer is None and self.logdir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.logdir), filename_suffix=OFFLINE_EVENTS_SUFFIX)
        return self._writer

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.active:
            for tag, value in values.items():
                self.writer.add_scalar(tag, float(value), step)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        if self.active:
            self.writer.add_figure(tag, figure, step)

    def image(self, tag: str, image: Any, step: int) -> None:
        """(C, H, W) in [0, 1]."""
        if self.active:
            self.writer.add_image(tag, image, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
