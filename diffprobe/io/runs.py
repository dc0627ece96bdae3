"""Run folders and checkpoint names: the one place that knows ``<run>/checkpoints/step=N.ckpt``.

A run directory is what ``train.py`` writes (``runs/<name>/version_<k>/``); its checkpoints are
named ``step=000100.ckpt`` ... and ``last.ckpt`` (a copy of the newest state, whose step is read
from the file).
"""

from __future__ import annotations

import re
from pathlib import Path

from diffprobe.io.loading import safe_load

STEP_IN_NAME = re.compile(r"step=(\d+)")
INITIAL_CHECKPOINT = "step=000000.ckpt"  # the weights before the first optimizer step (the init baseline)


def checkpoint_step(path: Path) -> int:
    """The global step of a checkpoint: from its name (``step=000100.ckpt``), else from the file
    (mapped, not read); -1 when it is not a readable checkpoint."""
    match = STEP_IN_NAME.search(Path(path).name)
    if match:
        return int(match.group(1))
    try:
        stored = safe_load(path, mmap=True)
    except (OSError, ValueError, TypeError):  # a damaged or foreign file: its loader says so clearly
        return -1
    return int(stored.get("global_step", -1)) if isinstance(stored, dict) else -1


def run_directory(path: str | Path) -> Path | None:
    """The run a checkpoint file or folder belongs to: ``<run>`` for ``<run>/checkpoints/x.ckpt``
    and for ``<run>`` itself (a folder with ``checkpoints/``); None outside a run. The path is taken
    as given (resolve it first to see through a link)."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        return path
    if path.parent.name == "checkpoints" and not path.is_dir():
        return path.parent.parent
    return None


def find_checkpoints(run_or_file: str | Path) -> list[Path]:
    """One checkpoint file, or every ``step=*.ckpt`` of a run directory in order of global step."""
    path = Path(run_or_file)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint or run directory at {path}")
    found = sorted((p for p in path.rglob("*.ckpt") if STEP_IN_NAME.search(p.name)), key=checkpoint_step)
    if not found:
        found = sorted(path.rglob("*.ckpt"))
    if not found:
        raise FileNotFoundError(f"run directory {path} holds no .ckpt files")
    return found


def initial_checkpoint(run_dir: Path) -> Path | None:
    """The run's step-0 weights (``checkpoints/step=000000.ckpt``), or None when it kept none."""
    path = Path(run_dir) / "checkpoints" / INITIAL_CHECKPOINT
    return path if path.is_file() else None
