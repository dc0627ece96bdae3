"""Loading diffprobe files as plain data: a checkpoint, a probe set or a concept reader never runs
code when it is read (``torch.load(weights_only=True)``), and a file that is not what it should be
is named in the error."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch


class LoadError(ValueError):
    """A file diffprobe will not load: not a diffprobe file, damaged, or holding Python objects
    whose unpickling could run code. Commands turn it into a clean exit with its message."""


# What torch's weights-only unpickler says when a file asks it to import or build a Python object.
_UNSAFE = re.compile(
    r"Unsupported global: GLOBAL \S+ was not an allowed global by default"
    r"|Trying to load unsupported GLOBAL \S+ whose module \S+ is blocked"
    r"|Trying to call reduce for unrecognized function[^\n]*"
    r"|Can only (?:create new object|build)[^\n]*"
    r"|Unsupported class \S+"  # torch < 2.4
)


def _torch_reason(error: BaseException) -> str:
    """torch's own reason, without its advice to retry with the unsafe loader."""
    text = str(error)
    found = _UNSAFE.search(text)
    if found:
        return found.group(0)
    text = text.split("WeightsUnpickler error:")[-1].split("Check the documentation of torch.load")[0]
    for boilerplate in ("Weights only load failed.", getattr(torch.serialization, "UNSAFE_MESSAGE", None)):
        text = text.replace(boilerplate, "") if boilerplate else text
    return f"{type(error).__name__}: {' '.join(text.split()) or repr(error)}"
def safe_load(path: str | Path, *, what: str = "checkpoint", map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """The contents of a diffprobe file (``.ckpt``, ``probe_set.pt``), loaded without running code.

    Only plain data comes back (tensors, numbers, strings, lists, tuples, dicts): the file is read
    with ``torch.load(weights_only=True)``, which refuses to import or call anything. ``what`` names
    the file's kind in messages. Raises FileNotFoundError (no such file) or LoadError (a
    ValueError) naming the file: empty, truncated, not a torch file, or holding Python objects.
    ``mmap``: map the tensors instead of reading them (a look at a large checkpoint's metadata).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is not a file")
    if path.stat().st_size == 0:
        raise LoadError(f"{path} is not a diffprobe {what} (the file is empty)")
    try:
        with warnings.catch_warnings():  # random bytes read as a pickle protocol number
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises pickle.UnpicklingError for a disallowed object
        reason = _torch_reason(error)
        if isinstance(error, pickle.UnpicklingError) and _UNSAFE.search(reason):
            raise LoadError(
                f"refusing to load {path}: it contains Python objects that could run code when loaded ({reason}). "
                "diffprobe only loads plain data (tensors, numbers, strings, lists, dicts). Re-create the file with "
                "diffprobe, or load it yourself with torch.load(weights_only=False) if you trust its author."
            ) from error
        # A damaged zip archive, random bytes, another format.
        raise LoadError(f"{path} is not a diffprobe {what} (truncated or not a torch file: {reason})") from error
