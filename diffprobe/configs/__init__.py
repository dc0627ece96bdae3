"""The configs diffprobe ships, addressable by bare name wherever ``--config`` is taken.

``diffprobe-train fit --config quickstart`` (or ``python train.py fit --config quickstart``) reads
``diffprobe/configs/quickstart.yaml``; ``diffprobe-probe auc --config auc`` reads
``diffprobe/configs/probe/auc.yaml``. A value that names an existing file, or that is not a bare
name (it holds a path separator or YAML), is taken as given, so ``--config configs/quickstart.yaml``
in a clone and ``--config my.yaml`` mean what they always did.

The repository's ``configs/`` holds the same files for repository users; ``tests/commands/test_packaging.py``
fails when the two copies differ (edit ``configs/``, then copy it here).
"""

from __future__ import annotations

import re
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile

__all__ = ["BUNDLED", "ConfigFile", "ProbeConfigFile", "bundled", "bundled_names", "resolve"]

BUNDLED = Path(__file__).resolve().parent
_BARE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def bundled_names(folder: str = "") -> list[str]:
    """The names ``--config`` takes for the configs shipped in ``folder`` ("" for training, "probe")."""
    return sorted(path.stem for path in (BUNDLED / folder).glob("*.yaml"))


def bundled(name: str, folder: str = "") -> Path | None:
    """The shipped config called ``name`` (``.yaml`` optional) in ``folder``, or None."""
    if not _BARE_NAME.fullmatch(name):
        return None
    path = BUNDLED / folder / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    return path if path.is_file() else None


def resolve(value: Any, folder: str = "") -> Any:
    """What ``--config value`` reads: the file ``value`` when there is one, else the shipped config it
    names. Anything else (a path that does not exist, a YAML string) is returned unchanged, for the
    parser to judge."""
    if not isinstance(value, str) or Path(value).exists():
        return value
    path = bundled(value, folder)
    return value if path is None else str(path)


class ConfigFile(ActionConfigFile):
    """jsonargparse's ``--config`` that also takes the name of a shipped config (``--config quickstart``)."""

    folder = ""

    def __call__(self, parser, cfg, values, option_string=None):
        path = resolve(values, self.folder)
        if path is values and isinstance(values, str) and _BARE_NAME.fullmatch(values) and "." not in values:
            names = ", ".join(bundled_names(self.folder))
            raise ArgumentError(self, f"{values!r} is neither a file here nor a config diffprobe ships ({names})")
        super().__call__(parser, cfg, path, option_string)


class ProbeConfigFile(ConfigFile):
    """``probe.py <command> --config``: names are those of ``diffprobe/configs/probe`` (``--config auc``)."""

    folder = "probe"
