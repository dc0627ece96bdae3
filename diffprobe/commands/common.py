"""What every ``probe.py`` command shares: the error a command reports to the user, the help text
of the parameters many commands have, and the light types their signatures use.

A command is a typed function; ``diffprobe.commands.probe`` builds its flags, ``--config`` and
``--help`` from the signature and the docstring (jsonargparse). This module imports nothing heavy,
so ``probe.py --help`` does not load torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from jsonargparse.typing import PositiveInt

from diffprobe.choices import Device, DType, Weights

__all__ = ["CommandError", "DType", "Device", "PositiveInt", "Weights", "as_list", "command", "flag", "new_file", "new_folder"]


class CommandError(Exception):
    """A problem with what the user asked for, said in the flags' words. ``probe.py`` prints it
    and exits; called from Python, the command raises it."""


@contextmanager
def flag(name: str) -> Iterator[None]:
    """Core errors (said in the core's words) raised inside, prefixed with the flag they concern."""
    try:
        yield
    except (ValueError, OSError) as error:  # OSError: a file that is missing, unreadable or not what it should be
        raise CommandError(f"{name}: {error}") from error


# Help of parameters many commands share; a command's own docstring wins where it says more.
SHARED_HELP = {
    "image_column": "--data's image column",
    "concept_columns": "--data's concept columns",
    "heldout_fraction": "share of --data held out when it has no test split",
    "ckpt": "a diffprobe .ckpt or run directory (its newest checkpoint), a 'probe.py export' folder, or a Stable Diffusion folder",
    "out": "new folder for the PNGs, .pt maps and JSON (never overwritten)",
    "prompt": "prompt of a conditional model (a ConceptShapes caption or Stable Diffusion text)",
    "seed": "seed of the sampling run (the first one when there are several)",
    "steps": "DDIM sampling steps of the run (paper: 20)",
    "step": "0-based index of the explained step in the run, 0 = most noisy (paper: 15)",
    "guidance": "classifier-free guidance scale (default: the model's; Stable Diffusion 7.5)",
    "weights": "the EMA or the raw weights of a diffprobe .ckpt or run (an export holds one set: ema)",
    "logdir": "TensorBoard directory (default: the run of --ckpt; none outside a run)",
    "device": "auto (cuda when there is one, else cpu), cpu, cuda, cuda:1, ...",
    "dtype": "Stable Diffusion weights' dtype (float16 on a GPU); diffprobe models stay float32",
    "scale": "upscale factor of the PNGs",
    "batch_size": "perturbed copies per UNet call (doubled under classifier-free guidance)",
    "schedules": "timestep schedules to sample under (paper: uniform, early, latter)",
    "schedule_steps": "N, steps of the uniform / early / latter schedules (paper: 30)",
    "lam": "lambda of the exponential schedules (paper: 60)",
    "window_start": "window schedule: steps packed in [start, start + width]",
    "window_width": "window schedule: width of the window",
    "window_steps": "window schedule: steps inside the window",
    "window_uniform_steps": "window schedule: evenly spread steps besides the window",
}

Command = TypeVar("Command", bound=Callable)


def command(function: Command) -> Command:
    """Marks a probe.py command and completes its docstring's ``Args:`` with the shared help of
    parameters it does not document itself (jsonargparse reads the help from the docstring)."""
    documented = inspect.getdoc(function) or ""
    missing = [name for name in inspect.signature(function).parameters if name in SHARED_HELP and f"    {name}:" not in documented]
    if missing:
        lines = [f"    {name}: {SHARED_HELP[name]}" for name in missing]
        documented = documented + ("\n" if "Args:" in documented else "\n\nArgs:\n") + "\n".join(lines)
    function.__doc__ = documented
    vars(function)["is_probe_command"] = True  # a function attribute, which a Callable type cannot declare
    return function


def as_list(value: str | list[str] | None) -> list[str]:
    """A flag that takes one value or a list (``--prompt 'a red circle'`` or ``--prompt '[a, b]'``)."""
    return [value] if isinstance(value, str) else list(value or [])


def new_folder(path: str | Path, name: str = "--out") -> Path:
    """``path`` as an output folder that is new or empty: diffprobe never writes over files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CommandError(f"{name} {path} is a file; give a new folder")
    if path.is_dir() and any(path.iterdir()):
        raise CommandError(f"{name} {path} exists and is not empty; choose another {name} (diffprobe does not overwrite files)")
    return path


def new_file(path: str | Path, suffix: str, name: str = "--out") -> Path:
    """``path`` as a new file with ``suffix``."""
    path = Path(path)
    if path.exists():
        raise CommandError(f"{name} {path} exists; choose another {name} (diffprobe does not overwrite files)")
    if path.suffix.lower() != suffix:
        raise CommandError(f"{name} {path} must be a {suffix} file name, e.g. {path.with_suffix(suffix)}")
    return path
