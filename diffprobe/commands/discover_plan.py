"""``probe.py discover``'s plan: every flag checked, the images chosen and the first checkpoint loaded
before any work (``commands/discover.py`` parses the flags; ``discover_output.py`` does the work)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from diffprobe.choices import Weights
from diffprobe.commands.common import CommandError, flag
from diffprobe.commands.source import Source, load_model, resolve, resolve_device

if TYPE_CHECKING:
    from diffprobe.data.probe_set import ProbeSet
    from diffprobe.diffusion.model import DiffusionModel
    from diffprobe.discover.sae import SAESettings

MAX_EXPANSION = 64
# Low, middle and high noise as shares of T (t = 10, 100 and 300 of T = 1000), snapped to the grid.
DEFAULT_T_SHARES = (0.01, 0.1, 0.3)


@dataclass(frozen=True)
class DiscoverPlan:
    source: Source
    folder: Path
    logdir: Path | None
    probe_set: ProbeSet
    layers: list[str]
    timesteps: list[int]
    concepts: list[str]
    settings: SAESettings
    weights: Weights
    device: str
    batch_size: int
    top_features: int


def _images(source: Source, model, probe_set: str | None, data: str | None, num_images: int, seed: int, options: dict):
    """The images dictionaries are learned on: --probe_set, the run's own probe set, or the first
    held-out images of --data (ConceptShapes by default), with or without concept labels."""
    import torch

    from diffprobe.commands.concept_data import run_data
    from diffprobe.data.probe_set import PROBE_SET_FILE, ProbeSet
    from diffprobe.diffusion.timesteps import default_timesteps
    from diffprobe.training.datamodules import ConceptShapesDataModule, HFDataModule, ImageDataModule

    given = Path(probe_set) if probe_set else source.run_dir / PROBE_SET_FILE if source.run_dir and data is None else None
    if probe_set and not Path(probe_set).is_file():
        raise CommandError(f"--probe_set {probe_set} does not exist")
    if given is not None and given.is_file():
        with flag(f"probe set {given}"):
            return ProbeSet.load(given)
    trained_on = run_data(source.run_dir)
    if data is None and trained_on is not None and not trained_on.endswith("ConceptShapesDataModule"):
        raise CommandError(f"{source.run_dir} was trained on {trained_on} and has no probe set: give --data (its source; --concept_columns optional)")
    grid = default_timesteps(model.num_train_timesteps)
    size = model.unet.config.sample_size
    module: ImageDataModule
    with flag("--data"):
        if data in (None, "shapes"):
            module = ConceptShapesDataModule(image_size=size, heldout_size=num_images, batch_size=1)
        else:
            module = HFDataModule(data, image_size=size, channels=model.unet.config.in_channels, batch_size=1, num_workers=0, **options)
        heldout = module.heldout_dataset()
        if module.concepts:
            return ProbeSet.from_dataset(heldout, module.concepts, size=num_images, timesteps=grid, seed=seed)
        count = min(num_images, len(heldout))
        images = torch.stack([heldout[i]["image"] for i in range(count)])
        empty = torch.zeros(count, 0, dtype=torch.long)
        return ProbeSet(images=images, labels=empty, control_labels=empty, timesteps=torch.tensor(grid), concepts={}, seed=seed)


def plan_discover(ckpt, out, layers, timesteps, concepts, expansion, k, sae_steps, probe_set, data, num_images, seed, weights, logdir, device,
                  batch_size, top_features, options) -> tuple[DiscoverPlan, DiffusionModel]:  # fmt: skip
    """Every flag checked, the probe images chosen and the first checkpoint loaded, before any work."""
    from diffprobe.capture import check_layers
    from diffprobe.discover.dictionaries import INPUT, grid_indices
    from diffprobe.discover.sae import SAESettings

    source = resolve(ckpt)
    folder = source.output_folder(out, "discover", "discover")
    device = resolve_device(device)
    first = load_model(source.files[0], weights, device)
    with flag("--layers"):
        chosen_layers = check_layers(first.unet, [name for name in layers if name != INPUT])
    images = _images(source, first, probe_set, data, num_images, seed, options)
    if timesteps is None:
        grid = images.timesteps.tolist()
        timesteps = sorted({min(grid, key=lambda t: abs(t - share * first.num_train_timesteps)) for share in DEFAULT_T_SHARES})
    with flag("--timesteps"):
        grid_indices(images, timesteps)
    unknown = sorted(set(concepts) - set(images.concepts))
    if unknown:
        have = ", ".join(images.concepts) or "none: these images have no concept labels (score features by eye in the gallery, or give --data with --concept_columns)"
        raise CommandError(f"--concepts {', '.join(unknown)}: not concepts of these images (they have {have})")
    if expansion > MAX_EXPANSION:
        raise CommandError(f"--expansion {expansion}: at most {MAX_EXPANSION} features per channel (a dictionary's codes are kept for every probe image)")
    for name, channels in _channels(first, images, chosen_layers).items():
        if k > expansion * channels:
            raise CommandError(f"--k {k}: {name} has {channels} channels, so --expansion {expansion} gives {expansion * channels} features; give --k at most that")
    settings = SAESettings(expansion=expansion, k=k, steps=sae_steps, seed=seed)
    plan = DiscoverPlan(source, folder, source.logdir(logdir), images, chosen_layers, sorted(set(timesteps)), list(concepts or images.concepts),
                        settings, weights, device, batch_size, top_features)  # fmt: skip
    _check_continuation(plan)
    return plan, first


def settings_record(plan: DiscoverPlan) -> dict:
    """What makes two discovers the same measurement (kept in discover.json / dictionaries.json)."""
    s = plan.settings
    return {"layers": plan.layers, "timesteps": plan.timesteps, "concepts": plan.concepts, "expansion": s.expansion, "k": s.k,
            "sae_steps": s.steps, "learning_rate": s.learning_rate, "seed": s.seed, "images": len(plan.probe_set), "weights": plan.weights}  # fmt: skip


def directions_path(folder: Path, step: int, weights: str) -> Path:
    """One checkpoint's dictionaries' decoder directions: what a rerun follows features back through."""
    return folder / "directions" / f"step{step:06d}_{weights}.pt"


def _check_continuation(plan: DiscoverPlan) -> None:
    """An earlier discover in the folder is continued only when it is the same measurement and kept
    the directions of every checkpoint it finished; otherwise it is refused, untouched."""
    from diffprobe.discover import results

    table, dictionaries = results.tables(plan.folder)
    if not table.csv_path.exists():
        return
    # discover.json is written first after each checkpoint: it has the settings even when a kill
    # came before dictionaries.json.
    earlier = table.read_summary().get("settings") or dictionaries.read_summary().get("settings")
    mine = settings_record(plan)
    if earlier != mine:
        changed = ", ".join(f"{k} {earlier.get(k)!r} -> {v!r}" for k, v in mine.items() if earlier and earlier.get(k) != v) or "unknown earlier settings"
        raise CommandError(f"{plan.folder} holds a discover with other settings ({changed}); give a new --out, or the earlier flags to continue it")
    steps = sorted({int(r["step"]) for r in dictionaries.read_rows() if r["layer"] != "input"})
    missing = [step for step in steps if not directions_path(plan.folder, step, plan.weights).is_file()]
    if missing:
        raise CommandError(f"{plan.folder} holds a discover without the directions of step(s) {missing} (an older version's); give a new --out")


def _channels(model, images, layers: list[str]) -> dict[str, int]:
    """Each layer's output channels, from one image through the UNet (at its first grid t)."""
    import torch

    from diffprobe.capture import capture_maps

    device = next(model.unet.parameters()).device
    x = images.images[:1].to(device)
    t = images.timesteps[:1].to(device)
    condition = model.empty_caption()
    with torch.no_grad(), capture_maps(model.unet, layers) as maps:
        model.unet(x, t, **({} if condition is None else {"encoder_hidden_states": condition}))
    return {name: int(maps[name].shape[1]) for name in layers}
