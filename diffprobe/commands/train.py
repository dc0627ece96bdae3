"""``train.py`` / ``diffprobe-train``: LightningCLI with diffprobe's run folders and resume rules.

The real function takes plain arguments and returns the CLI, so tests call it directly:
``train_main(["fit", "--config", ...])``. The CLI itself (``diffprobe.training.cli``) imports
Lightning; this module does not, so :func:`main` can set the CPU defaults before torch starts.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffprobe.training.cli import DiffprobeCLI

__all__ = ["main", "train_main"]


def train_main(args: list[str] | None = None, run: bool = True) -> DiffprobeCLI:
    """``python train.py fit --config configs/quickstart.yaml`` (all LightningCLI flags work; ``--config``
    also takes a shipped config's name: ``--config quickstart``).

    A flag or config value that is wrong (a misspelt or abbreviated key, ``--data.init_args.image_size 24``)
    exits with one message that names it, as the first line, before a run directory or a model exists."""
    from diffprobe.training.cli import build_cli, quiet_lightning  # Lightning: after main() set the CPU defaults

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_lightning()
    return build_cli(args, run=run)


def main() -> None:
    """The ``diffprobe-train`` console script (``train.py`` in a clone does the same)."""
    from diffprobe import cpu

    cpu.configure()  # before torch starts: OpenMP reads its CPU settings once (diffprobe/cpu.py says why)
    train_main()
