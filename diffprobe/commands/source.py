"""What ``--ckpt`` names, resolved once for every probe.py command, and the flags every command
that loads weights shares in one dialect: ``--weights ema|raw``, ``--device auto``, ``--logdir``.

``--ckpt`` may be a diffprobe ``.ckpt``, a run directory (its checkpoints in step order), a folder
written by ``probe.py export`` (or any diffusers DDPM pipeline folder), a bare diffusers UNet
folder, or a Stable Diffusion pipeline folder. :func:`resolve` says which, before anything heavy
is loaded; :func:`load_model` turns one entry into the model a command needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from diffprobe.choices import Weights
from diffprobe.commands.common import CommandError, flag

Kind = Literal["checkpoint", "export", "unet", "stable-diffusion"]

_WHAT = (
    "Give a diffprobe .ckpt or run directory, a folder written by 'probe.py export' (or another diffusers DDPM pipeline), "
    "a diffusers UNet folder, or a Stable Diffusion folder"
)


@dataclass(frozen=True)
class WeightsFile:
    """One file or folder of weights a command runs on."""

    name: str  # the checkpoint file's or folder's name: result tables are keyed by it
    path: Path
    kind: Kind
    step: int  # the global step the weights were saved at (0 when the folder does not say)


@dataclass(frozen=True)
class Source:
    """What ``--ckpt`` named: its weights (several for a run directory, in step order) and the
    run directory it belongs to, if any (where outputs and TensorBoard scalars go by default)."""

    path: Path
    files: list[WeightsFile]
    run_dir: Path | None

    @property
    def newest(self) -> WeightsFile:
        return self.files[-1]

    def output_folder(self, out: str | None, name: str, command: str) -> Path:
        """``--out``, or ``<run>/<name>`` inside a run and ``<name>-<ckpt name>`` beside ``--ckpt``
        outside one; refused when it is a file. A folder an earlier call of ``command`` wrote is
        reused (the command decides what it still has to measure)."""
        folder = Path(out) if out else self.run_dir / name if self.run_dir else self.path.parent / f"{name}-{self.path.stem}"
        if folder.exists() and not folder.is_dir():
            raise CommandError(f"--out {folder} is a file; give a folder (new, or one an earlier probe.py {command} wrote)")
        return folder

    def logdir(self, given: str | None) -> Path | None:
        """Where TensorBoard goes: ``--logdir`` when given, else the run's own folder (none outside a run)."""
        if given:
            if Path(given).exists() and not Path(given).is_dir():
                raise CommandError(f"--logdir {given} is a file; give a TensorBoard directory")
            return Path(given)
        return self.run_dir


def resolve_device(device: str) -> str:
    """``--device auto``: cuda when there is one, else cpu; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _folder_kind(path: Path) -> Kind | None:
    from diffprobe.explain.stable_diffusion import is_stable_diffusion_folder

    if is_stable_diffusion_folder(path):
        return "stable-diffusion"
    if (path / "unet" / "config.json").is_file():
        return "export"
    if (path / "config.json").is_file():
        return "unet"
    return None


def resolve(ckpt: str | Path) -> Source:
    """The weights ``ckpt`` names; a CommandError saying what to give when it names none."""
    from diffprobe.diffusion.folders import exported_step
    from diffprobe.io.runs import checkpoint_step, find_checkpoints, run_directory

    path = Path(ckpt).expanduser()
    if not path.exists():
        from diffprobe.explain.stable_diffusion import DOWNLOAD_HINT

        raise CommandError(f"--ckpt {path} does not exist. {_WHAT} (to get one, {DOWNLOAD_HINT.format(folder='<folder>')})")
    if path.is_dir():
        kind = _folder_kind(path)
        if kind is not None:
            step = exported_step(path) if kind == "export" else None
            return Source(path, [WeightsFile(path.name, path, kind, step or 0)], None)
    try:
        found = find_checkpoints(path)
    except FileNotFoundError as error:
        raise CommandError(f"--ckpt {path}: {error}. {_WHAT}") from error
    folders = sorted({str(p.parent) for p in found})
    if len(folders) > 1:  # e.g. runs/quickstart/ holding version_0, version_1, ...: which run is meant?
        raise CommandError(f"--ckpt {path} holds the checkpoints of several runs ({', '.join(folders)}); give one run directory or checkpoint")
    # Lightning's file names carry the step; a file without one (last.ckpt) is read for it.
    files = [WeightsFile(p.name, p, "checkpoint", max(checkpoint_step(p), 0)) for p in found]
    resolved = path.resolve()
    run_dir = run_directory(resolved.parent if resolved.is_dir() and resolved.name == "checkpoints" else resolved)
    return Source(path, files, run_dir)


def load_model(entry: WeightsFile, weights: Weights = "ema", device: str = "cpu"):
    """The :class:`~diffprobe.diffusion.model.DiffusionModel` of a diffprobe checkpoint, export or
    UNet folder: eval mode, frozen, on ``device``. Damaged, foreign or unsafe files are named."""
    from diffprobe.diffusion import folders
    from diffprobe.diffusion.model import load_checkpoint

    if weights == "raw" and entry.kind != "checkpoint":
        raise CommandError(f"--weights raw: {entry.path} is a diffusers folder, which holds one set of weights; give a diffprobe .ckpt for the raw ones")
    if entry.kind == "stable-diffusion":
        raise CommandError(f"--ckpt {entry.path} is a Stable Diffusion pipeline; this command needs a diffprobe model (pixel-space UNet)")
    with flag(f"--ckpt {entry.path}"):
        if entry.kind == "checkpoint":
            model = load_checkpoint(entry.path, weights)
        elif entry.kind == "export":
            model = folders.load_exported(entry.path)
        else:
            model = folders.load_unet_folder(entry.path)
    return model.frozen(resolve_device(device))


def load_explain_model(entry: WeightsFile, *, weights: Weights = "ema", device: str = "auto", guidance: float | None = None, dtype: str = "float32"):
    """(ExplainModel, global step) for the explanation tools: a diffprobe model or Stable Diffusion.
    ``dtype``: Stable Diffusion's weights (float16 / bfloat16 halve its memory on a GPU)."""
    import torch

    from diffprobe.explain.model import from_model

    if entry.kind == "stable-diffusion":
        from diffprobe.explain.stable_diffusion import load_stable_diffusion

        if weights == "raw":
            raise CommandError(f"--weights raw: {entry.path} is a Stable Diffusion pipeline, which holds one set of weights")
        with flag(f"--ckpt {entry.path}"):
            model = load_stable_diffusion(
                entry.path, guidance_scale=7.5 if guidance is None else guidance, device=resolve_device(device), dtype=getattr(torch, dtype)
            )
        return model, 0
    loaded = load_model(entry, weights, device)
    return from_model(loaded, guidance), loaded.step


def require_conditional(model, needs: str) -> None:
    if not model.conditional:
        raise CommandError(
            f"{needs} needs a conditional model (prompts whose tokens can be relevant); this checkpoint is unconditional. "
            "Train one with: python train.py fit --config configs/shapes_conditional.yaml"
        )
