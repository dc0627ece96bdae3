"""diffusers folders: pretrained UNets to fine-tune, and the folders ``probe.py export`` writes.

An exported unconditional model is a plain ``DDPMPipeline`` folder (``unet/``, ``scheduler/``,
``model_index.json``). A conditional one has ``unet/`` (UNet2DConditionModel), ``scheduler/`` and
``caption_encoder/`` (:class:`~diffprobe.diffusion.captions.CaptionEncoder`, also a diffusers
ModelMixin). ``diffprobe.json`` beside them keeps what diffusers has no place for (the training
step, which weights, the guidance weight).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DConditionModel, UNet2DModel

from diffprobe.diffusion.captions import CaptionEncoder
from diffprobe.diffusion.model import DiffusionModel
from diffprobe.diffusion.unet import UNet, check_image_size
from diffprobe.io.atomic import write_json

EXPORT_SETTINGS = "diffprobe.json"  # what diffusers' folders have no place for


@dataclass(frozen=True)
class _Location:
    """Where a pretrained UNet lives: ``root`` (+ ``subfolder`` on the hub), its class as its
    config names it, and the folder of a scheduler stored beside it."""

    root: str
    subfolder: str | None
    class_name: str | None
    scheduler_dir: Path | None


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _locate(name_or_path: str) -> _Location:
    path = Path(name_or_path).expanduser()
    if path.exists():
        unet_dir = path / "unet" if (path / "unet" / "config.json").exists() else path
        config_file = unet_dir / "config.json"
        if not config_file.exists():
            raise FileNotFoundError(
                f"pretrained folder {path} has no config.json (nor unet/config.json): it is not a diffusers "
                "UNet or pipeline folder. Point --model.pretrained at a folder written by save_pretrained."
            )
        # A pipeline folder keeps its scheduler in scheduler/; `hf download` of a bare repo at the root.
        scheduler_dir = next((d for d in (path / "scheduler", path) if (d / "scheduler_config.json").exists()), None)
        return _Location(str(unet_dir), None, json.loads(config_file.read_text()).get("_class_name"), scheduler_dir)
    if _looks_like_hub_id(name_or_path):
        return _Location(name_or_path, "unet", None, None)
    raise FileNotFoundError(
        f"pretrained UNet {name_or_path!r} not found: no such folder, and it is not a hub id of the form "
        "'owner/name'. Give a diffusers folder (save_pretrained) or a hub id such as google/ddpm-cifar10-32."
    )


def _read_unet(expected: type[UNet], where: _Location, name: str) -> UNet:
    try:
        return expected.from_pretrained(where.root, subfolder=where.subfolder)
    except (ValueError, RuntimeError) as error:  # weights whose shapes do not fit the config
        first_lines = "\n".join(str(error).splitlines()[:3])
        raise ValueError(
            f"the weights in {name} do not fit its UNet config (a UNet of another shape?):\n{first_lines}\n"
            "Re-save the UNet with save_pretrained so config.json and the weights match."
        ) from error
    except OSError as error:
        if where.subfolder is None:
            raise
        # Hub pipelines keep the UNet in unet/; plain UNet repos keep it at the root.
        try:
            return expected.from_pretrained(where.root)
        except OSError:
            raise OSError(
                f"could not load {expected.__name__} from {name!r}: {error}. Without network, download "
                f"it first (e.g. `hf download {name} --local-dir weights/{name.split('/')[-1]}`) "
                "and point --model.pretrained at that folder."
            ) from error


def _stored_scheduler(where: _Location) -> DDPMScheduler | None:
    if where.scheduler_dir is not None:
        return DDPMScheduler.from_pretrained(where.scheduler_dir)
    if where.subfolder is not None:
        try:
            return DDPMScheduler.from_pretrained(where.root, subfolder="scheduler")
        except OSError:
            return None
    return None


def load_pretrained(name_or_path: str, *, conditional: bool, in_channels: int | None = None, image_size: int | None = None) -> DiffusionModel:
    """A diffusers UNet and the scheduler stored beside it (diffusers' default DDPM schedule, with
    ``noise_process_known`` False, when there is none).

    Accepts a pipeline folder (with ``unet/`` and ``scheduler/``), a bare UNet folder, or a hub id
    such as ``google/ddpm-cifar10-32`` (downloaded by diffusers; needs network once).
    """
    where = _locate(name_or_path)
    expected = UNet2DConditionModel if conditional else UNet2DModel
    if where.class_name is not None and where.class_name != expected.__name__:
        raise ValueError(
            f"{name_or_path} holds a {where.class_name}, but this model needs a {expected.__name__} "
            f"(conditional={conditional}). Point --model.pretrained at a {expected.__name__} folder."
        )
    unet = _read_unet(expected, where, name_or_path)
    if in_channels is not None and unet.config.in_channels != in_channels:
        raise ValueError(
            f"pretrained UNet {name_or_path} takes {unet.config.in_channels}-channel images but the data gives "
            f"{in_channels} channels; set --data.channels {unet.config.in_channels} or use another UNet."
        )
    if image_size is not None:
        check_image_size(image_size, dict(unet.config))
    scheduler = _stored_scheduler(where)
    return DiffusionModel(unet, scheduler or DDPMScheduler(), noise_process_known=scheduler is not None)


def fine_tuning_unet(
    pretrained: str,
    *,
    conditional: bool,
    image_size: int,
    in_channels: int,
    noise_process: dict[str, Any],
    warn: Callable[[str], None] = warnings.warn,
) -> DiffusionModel:
    """:func:`load_pretrained`, made ready to train at ``image_size`` (its ``sample_size`` set to it).

    The stored scheduler stays the noise process (the weights were trained with it); where it
    differs from the configured ``noise_process`` (e.g. ``num_train_timesteps``,
    ``prediction_type``), ``warn`` says so. ``warn`` is a parameter so that a Lightning module
    can warn on rank zero only without the core importing Lightning.
    """
    loaded = load_pretrained(pretrained, conditional=conditional, in_channels=in_channels, image_size=image_size)
    if loaded.unet.config.sample_size != image_size:
        warn(f"pretrained UNet was made for {loaded.unet.config.sample_size}px images; fine-tuning at {image_size}px")
        loaded.unet.register_to_config(sample_size=image_size)
    if loaded.noise_process_known:
        stored = loaded.scheduler.config
        differ = {k: stored[k] for k, v in noise_process.items() if stored[k] != v}
        if differ:
            warn(f"using the pretrained folder's noise process {differ} instead of the configured {noise_process}")
    # from_pretrained returns the UNet in eval mode, and Lightning keeps a submodule's mode as it
    # finds it: without this, fine-tuning would run with dropout off.
    loaded.unet.train()
    return loaded


def exported_step(folder: str | Path) -> int | None:
    """The global step an export folder was written at (None when it does not say)."""
    settings = Path(folder) / EXPORT_SETTINGS
    if not settings.is_file():
        return None
    try:
        step = json.loads(settings.read_text()).get("global_step")
    except (ValueError, AttributeError):
        return None
    return int(step) if step is not None else None


def unet_class_name(folder: Path) -> str | None:
    """The ``_class_name`` a UNet folder's config.json names (None when unreadable)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return None


def save_exported(model: DiffusionModel, out_dir: str | Path) -> Path:
    """Write ``model`` as a diffusers folder (copies on the CPU; the model is not changed).
    Refuses to write into a non-empty folder, so nothing the user had is overwritten."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"export folder {out} exists and is not empty; choose a new --out")
    unet = copy.deepcopy(model.unet).to("cpu", memory_format=torch.contiguous_format)
    scheduler = DDPMScheduler.from_config(model.scheduler.config)
    # Sampling settings and provenance (read back by load_exported and ExportDiffusers).
    settings: dict[str, Any] = {"global_step": int(model.step), "weights": model.weights}
    if model.caption_encoder is None:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out)
    else:
        unet.save_pretrained(out / "unet")
        scheduler.save_pretrained(out / "scheduler")
        # diffusers wraps ModelMixin.to in functools.wraps(nn.Module.to), which mypy reads as an unbound function.
        copy.deepcopy(model.caption_encoder).to("cpu").save_pretrained(out / "caption_encoder")  # type: ignore[arg-type]
        settings["guidance_scale"] = model.guidance_scale
    write_json(out / EXPORT_SETTINGS, settings)
    return out


def load_exported(folder: str | Path) -> DiffusionModel:
    """Load a folder written by :func:`save_exported` (either kind)."""
    folder = Path(folder)
    if not (folder / "unet" / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not an exported diffprobe/diffusers folder (no unet/config.json)")
    conditional = unet_class_name(folder / "unet") == UNet2DConditionModel.__name__
    if conditional and not (folder / "caption_encoder").is_dir():
        raise ValueError("a conditional UNet without diffprobe's caption_encoder/ (not a folder 'probe.py export' wrote): nothing here encodes its prompts")
    encoder = CaptionEncoder.from_pretrained(folder / "caption_encoder") if conditional else None
    unet = (UNet2DConditionModel if conditional else UNet2DModel).from_pretrained(folder / "unet")
    settings = json.loads((folder / EXPORT_SETTINGS).read_text()) if (folder / EXPORT_SETTINGS).exists() else {}
    # Folders exported before diffprobe.json existed: shapes_conditional.yaml's CFG weight.
    guidance = float(settings.get("guidance_scale", 3.0 if encoder is not None else 1.0))
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    return DiffusionModel(unet, scheduler, encoder, guidance, int(settings.get("global_step") or 0), settings.get("weights", "ema"))


def load_unet_folder(folder: str | Path) -> DiffusionModel:
    """A bare unconditional diffusers UNet folder: diffusers' default DDPM schedule unless a
    scheduler config sits beside it."""
    if unet_class_name(Path(folder)) == UNet2DConditionModel.__name__:
        raise ValueError(f"{folder} is a bare conditional UNet without its caption encoder; give the folder 'probe.py export' wrote, which holds both")
    return load_pretrained(str(folder), conditional=False)
