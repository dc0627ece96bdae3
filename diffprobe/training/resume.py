"""What ``train.py fit --ckpt_path X`` means, decided and checked before a model is trained or a
run directory is written.

- X must be a complete diffprobe checkpoint (loaded safely: plain data only).
- X is the newest checkpoint of its run (``<run>/checkpoints/X``): the run continues in place.
- X is an older checkpoint, or lies outside a run: a new run (a new version folder) starts from
  X's state; X's run is left as it is, so its later history is never overlapped.
- The configured model must be the architecture X was trained with, at the same image size:
  otherwise the weights would not fit, or would silently train at another resolution.
- X = ``last``: the newest checkpoint of the newest run of the config's logger name (one command
  for a job's first start and every requeue); a new run when that name has no checkpoint yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffprobe.diffusion.model import CHECKPOINT_MARKER
from diffprobe.io.loading import safe_load
from diffprobe.io.runs import checkpoint_step, run_directory


@dataclass
class ResumeSource:
    path: Path
    global_step: int
    run_dir: Path | None  # <run> when the file lies in <run>/checkpoints/
    newest: bool  # no other checkpoint of that run is past it
    newest_path: Path | None  # the run's newest checkpoint (this one when ``newest``)
    unet_class: str
    unet_config: dict[str, Any]
    hyper_parameters: dict[str, Any]

    @property
    def continues_in_place(self) -> bool:
        return self.run_dir is not None and self.newest


def inspect_resume_checkpoint(path: str | Path) -> ResumeSource:
    """Check ``path`` and place it: raises FileNotFoundError / ValueError with the fix in words."""
    path = Path(path)
    if path.is_dir():
        hint = f" such as {path / 'checkpoints' / 'last.ckpt'}" if (path / "checkpoints").is_dir() else ""
        raise ValueError(f"--ckpt_path {path} is a directory; give a checkpoint file{hint}")
    checkpoint = safe_load(path, mmap=True)
    if not isinstance(checkpoint, dict) or CHECKPOINT_MARKER not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"--ckpt_path {path} is not a diffprobe training checkpoint (no '{CHECKPOINT_MARKER}' entry); give a .ckpt written by train.py")
    step = int(checkpoint.get("global_step", 0))
    run_dir = run_directory(path.resolve()) if path.is_file() else None
    newest, newest_path = True, path
    if run_dir is not None:
        later = [(s, p) for p in path.resolve().parent.glob("*.ckpt") if p != path.resolve() and (s := checkpoint_step(p)) > step]
        if later:
            newest, newest_path = False, max(later)[1]
    stored = checkpoint[CHECKPOINT_MARKER]
    return ResumeSource(
        path=path,
        global_step=step,
        run_dir=run_dir,
        newest=newest,
        newest_path=newest_path,
        unet_class=str(stored.get("unet_class", "")),
        unet_config=dict(stored.get("unet_config", {})),
        hyper_parameters=dict(checkpoint.get("hyper_parameters", {})),
    )


def _version_number(folder: Path) -> int:
    suffix = folder.name.removeprefix("version_")
    return int(suffix) if suffix.isdigit() else -1


def newest_run_checkpoint(runs: Path) -> Path | None:
    """``--ckpt_path last``: in ``runs`` (``<save_dir>/<name>``), the newest checkpoint of the
    newest run that has one (runs in order of their version number; in a run, the checkpoint of the
    highest step, ``last.ckpt`` on a tie). None when no run there has a checkpoint."""
    if not runs.is_dir():
        return None
    versions = sorted((d for d in runs.iterdir() if d.is_dir() and _version_number(d) >= 0), key=_version_number, reverse=True)
    for run in versions:
        steps = [(checkpoint_step(p), p.name == "last.ckpt", p) for p in (run / "checkpoints").glob("*.ckpt")]
        readable = [entry for entry in steps if entry[0] >= 0]
        if readable:
            return max(readable)[2]
    return None


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))  # tuples and lists compare equal


# DiffusionModule arguments that decide which weights and noise process a checkpoint fits.
ARCHITECTURE_SETTINGS = ("conditional", "vocabulary", "max_caption_tokens", "num_train_timesteps", "prediction_type", "beta_schedule")


def setting_changes(source: ResumeSource, module) -> list[str]:
    """The other hyper-parameters (learning rate, EMA decay, ...) that this run sets differently:
    allowed, and said."""
    skip = set(ARCHITECTURE_SETTINGS) | {"preset", "unet", "pretrained", "image_size", "in_channels"}
    changes = []
    for key, value in sorted(source.hyper_parameters.items()):
        if key.startswith("_") or key in skip or key not in module.hparams:
            continue
        if _plain(value) != _plain(module.hparams[key]):
            changes.append(f"{key} {value!r} -> {module.hparams[key]!r}")
    return changes


def architecture_differences(source: ResumeSource, module) -> list[str]:
    """What the configured DiffusionModule would change about the checkpoint's model, in words."""
    differences = []
    unet = module.unet
    if source.unet_class and source.unet_class != type(unet).__name__:
        differences.append(f"UNet class: checkpoint {source.unet_class}, configured {type(unet).__name__}")
    ours = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    theirs = {k: v for k, v in source.unet_config.items() if not k.startswith("_")}
    size_then, size_now = theirs.pop("sample_size", None), ours.pop("sample_size", None)
    if size_then is not None and _plain(size_then) != _plain(size_now):
        differences.append(f"image size: checkpoint {size_then}px, configured {size_now}px (--data.image_size)")
    for key in sorted(set(ours) & set(theirs)):  # a key a newer diffusers added is no difference
        if _plain(ours.get(key)) != _plain(theirs.get(key)):
            differences.append(f"unet.{key}: checkpoint {_plain(theirs.get(key))!r}, configured {_plain(ours.get(key))!r}")
    hp = source.hyper_parameters
    conditional = bool(hp.get("conditional")) or bool(module.hparams.get("conditional"))
    for key in ARCHITECTURE_SETTINGS:
        if key in ("vocabulary", "max_caption_tokens") and not conditional:
            continue  # captions only matter to a conditional model
        if key in hp and _plain(hp[key]) != _plain(module.hparams.get(key)):
            if key == "num_train_timesteps" and module.scheduler.config.num_train_timesteps == hp[key]:
                continue
            differences.append(f"{key}: checkpoint {hp[key]!r}, configured {module.hparams.get(key)!r}")
    return differences
