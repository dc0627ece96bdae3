"""``probe.py linear``: linear concept probes on saved checkpoints (or an exported / diffusers UNet),
each beside its two baselines.

For one checkpoint or every checkpoint of a run (in order of global step) it extracts the features
of the run's probe set, fits every (layer, t, concept) probe and compares it with the *input*
baseline (the same probe on x_t itself) and the *init* baseline (the same probes on the run's
step-0 weights), so that a row says what the model learned, not only what is decodable. It writes
into ``out`` (default ``<run>/probes``): ``probes.csv`` / ``probes.json``, heatmap PNGs,
``emergence.json``, the decodability figures, and TensorBoard (``--logdir``, by default the run's
own folder) at each checkpoint's global step. Cells already in the table are skipped unless
``overwrite``: a second call after more training probes only the new checkpoints.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveInt, restricted_number_type

from diffprobe.choices import Device, Method, Pool, Weights
from diffprobe.commands.common import CommandError, as_list, command, flag
from diffprobe.commands.source import Source, WeightsFile, load_model, resolve, resolve_device

# Probes are fitted and tested on a split of it. (jsonargparse annotates restricted_number_type as returning a
# TypeAlias, which mypy cannot use as a type: to mypy the alias is Any.)
ProbeSetSize: TypeAlias = restricted_number_type("ProbeSetSize", int, [(">=", 10)])  # type: ignore[valid-type]
DEFAULT_PROBE_SET_SIZE = 300


def log(message: str) -> None:
    print(f"probe.py linear: {message}", file=sys.stderr)


@dataclass(frozen=True)
class ProbeSetRequest:
    """What the flags say about the probe set: a file, or how to make a new one."""

    path: str | None
    timesteps: list[int] | None
    data: str | None
    size: int | None
    seed: int | None
    data_options: dict

    def making_flags(self) -> list[str]:
        """The flags given that only matter when a new probe set is made."""
        given = [("--timesteps", self.timesteps), ("--data", self.data), ("--num_images", self.size), ("--seed", self.seed)]
        return [name for name, value in given if value is not None]


@dataclass(frozen=True)
class LinearPlan:
    """Everything ``linear`` does, decided and checked before anything is written."""

    source: Source
    folder: Path
    probe_set: object  # data.probe_set.ProbeSet
    probe_set_is_new: bool
    layers: list[str]
    pool: Pool
    method: Method
    weights: Weights
    num_train_timesteps: int
    init: WeightsFile | None
    init_note: str
    device: str
    batch_size: int
    overwrite: bool
    logdir: Path | None


def _existing_probe_set(source: Source, folder: Path, request: ProbeSetRequest):
    """(probe set, where) of the given one, the run's own, or one an earlier call saved in
    ``folder``; None when there is none. Flags that would make another one are refused: results
    stay comparable across calls only on one probe set."""
    from diffprobe.data.probe_set import PROBE_SET_FILE, ProbeSet

    candidates = [Path(request.path)] if request.path else [p for p in (source.run_dir and source.run_dir / PROBE_SET_FILE, folder / PROBE_SET_FILE) if p]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        return None
    ignored = [] if request.path else request.making_flags()
    if ignored:
        why = "the run's own probe set" if source.run_dir is not None and found == source.run_dir / PROBE_SET_FILE else "the probe set an earlier call saved there"
        raise CommandError(
            f"{' and '.join(ignored)} would make a new probe set, but {found} is {why} and is used instead, so that results stay "
            "comparable; leave them out, or give another --out (outside a run: a new folder) to probe on a new probe set"
        )
    with flag(f"probe set {found}"):
        return ProbeSet.load(found), found


def _new_probe_set(model, request: ProbeSetRequest):
    """A probe set made for this model from ConceptShapes or a Hugging Face data set."""
    from diffprobe.data.probe_set import ProbeSet
    from diffprobe.diffusion.timesteps import check_timesteps, default_timesteps
    from diffprobe.training.datamodules import ConceptShapesDataModule, HFDataModule, ImageDataModule

    T = model.num_train_timesteps
    grid = list(request.timesteps) if request.timesteps else default_timesteps(T)
    with flag("--timesteps"):
        check_timesteps(grid, T, "the")
    size = request.size or DEFAULT_PROBE_SET_SIZE
    image_size = model.unet.config.sample_size
    data: ImageDataModule
    with flag("--data"):
        if request.data is None or request.data == "shapes":
            data = ConceptShapesDataModule(image_size=image_size, heldout_size=size, batch_size=1)
        else:
            data = HFDataModule(request.data, image_size=image_size, batch_size=1, num_workers=0, **request.data_options)
        return ProbeSet.from_dataset(data.heldout_dataset(), data.concepts, size=size, timesteps=grid, seed=request.seed or 0)


def _check_probe_set(probe_set, model, where: str) -> None:
    """A probe set that fits the model: t in [0, T), image size, channels."""
    from diffprobe.diffusion.timesteps import check_timesteps

    with flag(where):
        check_timesteps(probe_set.timesteps.tolist(), model.num_train_timesteps, "its")
    size = model.unet.config.sample_size
    expected = (model.unet.config.in_channels, *(size if isinstance(size, (tuple, list)) else (size, size)))
    if tuple(probe_set.images.shape[1:]) != expected:
        shape = "x".join(map(str, probe_set.images.shape[1:]))
        raise CommandError(f"{where}: its images are {shape}, the model takes {'x'.join(map(str, expected))}; use a probe set made for this model")


def _init_weights(source: Source, init: str) -> tuple[WeightsFile | None, str]:
    """The init baseline's weights and a sentence for the output: the run's step-0 checkpoint, a
    checkpoint ``--init`` names, or none (said why)."""
    from diffprobe.io.runs import INITIAL_CHECKPOINT, initial_checkpoint

    if init == "none":
        return None, "no init baseline (--init none): gains are measured against the input baseline only"
    if init != "auto":
        entry = resolve(init).files[0]
        if entry.kind != "checkpoint":
            raise CommandError(f"--init {init} is a diffusers folder; give a diffprobe .ckpt of the same architecture at its initialisation")
        return entry, f"init baseline: {entry.path}"
    if source.run_dir is None:
        return None, f"no init baseline: {source.path} is not a training run, so it has no step-0 weights; gains are measured against the input baseline only"
    found = initial_checkpoint(source.run_dir)
    if found is None:
        raise CommandError(
            f"{source.run_dir} has no step-0 weights (checkpoints/{INITIAL_CHECKPOINT}), so the init baseline is missing: runs trained with "
            "this version of diffprobe keep them. Retrain, give --init <a .ckpt of the same architecture at initialisation>, or give "
            "--init none to compare with the input baseline only"
        )
    return WeightsFile(found.name, found, "checkpoint", 0), f"init baseline: the run's step-0 weights ({found.name})"


def _check_earlier_rows(folder: Path, pool: str, method: str, overwrite: bool) -> None:
    """Rows already in ``folder`` were fitted the same way (or ``--overwrite`` replaces them)."""
    from diffprobe.probes import results

    settings = {(r.get("pool") or "mean", r.get("method") or "logistic") for r in results.read_rows(folder)}
    other = sorted(settings - {(pool, method)})
    if other and not overwrite:
        raise CommandError(
            f"{folder} holds probes fitted with --pool {other[0][0]} --method {other[0][1]}; results of one table must be comparable: "
            "give another --out, or --overwrite true to replace them"
        )


def plan_linear(ckpt: str, out: str | None, request: ProbeSetRequest, layers: list[str] | None, pool: Pool, method: Method, weights: Weights,
                init: str, logdir: str | None, overwrite: bool, device: str, batch_size: int) -> tuple[LinearPlan, object]:  # fmt: skip
    """Every input checked (and the first model loaded, for T, image size and block names) before
    ``out`` is made, so a bad call leaves nothing behind; returns the plan and the first model."""
    from diffprobe.capture import check_layers, default_layers

    if request.path and not Path(request.path).is_file():
        raise CommandError(f"--probe_set {request.path} does not exist")
    source = resolve(ckpt)
    folder = source.output_folder(out, "probes", "linear")
    device = resolve_device(device)
    first = load_model(source.files[0], weights, device)
    with flag("--layers"):
        names = check_layers(first.unet, layers or default_layers(first.unet))
    existing = _existing_probe_set(source, folder, request)
    probe_set, where = existing if existing is not None else (_new_probe_set(first, request), None)
    _check_probe_set(probe_set, first, f"probe set {where}" if where is not None else "the new probe set")
    init_entry, init_note = _init_weights(source, init)
    _check_earlier_rows(folder, pool, method, overwrite)
    plan = LinearPlan(source, folder, probe_set, where is None, list(names), pool, method, weights, first.num_train_timesteps, init_entry, init_note, device, batch_size,
                      overwrite, source.logdir(logdir))  # fmt: skip
    return plan, first


@command
def linear(
    ckpt: str, out: str | None = None, probe_set: str | None = None, layers: list[str] | str | None = None, pool: Pool = "mean", method: Method = "logistic",
    weights: Weights = "ema", init: str = "auto", logdir: str | None = None, overwrite: bool = False, device: Device = "auto", batch_size: PositiveInt = 128,
    num_images: ProbeSetSize | None = None, timesteps: list[NonNegativeInt] | None = None, seed: int | None = None, data: str | None = None,
    image_column: str = "img", concept_columns: tuple[str, ...] = ("label",), heldout_fraction: OpenUnitInterval = 0.05,
) -> Path:  # fmt: skip
    """Linear concept probes per (layer, t, concept) on one checkpoint or every checkpoint of a run,
    each beside the input and init baselines (learned = significantly above both).

    Args:
        ckpt: a .ckpt file, a run directory (all its checkpoints, in step order), a 'probe.py export' folder or a diffusers UNet folder
        out: output folder (default: <run>/probes, or probes-<name> beside --ckpt outside a run)
        probe_set: probe_set.pt to use (default: the run's own, or the one an earlier call saved in --out)
        layers: UNet module names (default: every down / mid / up block)
        pool: how a block's feature map becomes a probe's input
        method: how the probes are fitted
        weights: probe the EMA or the raw weights of a checkpoint
        init: the init baseline's weights: auto (a run's step=000000.ckpt; none outside a run), none, or a .ckpt
        overwrite: redo cells already in probes.csv
        batch_size: images per UNet call
        num_images: size of a new probe set (default 300; at least 10: probes are fitted and tested on a split)
        timesteps: t grid of a new probe set (training indices, 0 = the clean end)
        seed: seed of a new probe set's images and noise (default 0)
        data: the images of a new probe set: 'shapes' (ConceptShapes) or a Hugging Face data set / local path
    """
    from diffprobe.commands.linear_output import measure_and_write
    from diffprobe.commands.writing import guarded_output

    request = ProbeSetRequest(probe_set, list(timesteps) if timesteps else None, data, num_images, seed,
                              {"image_column": image_column, "concept_columns": list(concept_columns), "heldout_fraction": heldout_fraction})  # fmt: skip
    plan, first = plan_linear(ckpt, out, request, as_list(layers) or None, pool, method, weights, init, logdir, overwrite, device, batch_size)
    with guarded_output(plan.folder, "linear"):
        return measure_and_write(plan, first)
