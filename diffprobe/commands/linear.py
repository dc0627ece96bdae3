"""``probe.py linear``: linear concept probes on saved checkpoints (or an exported / diffusers UNet).

For one checkpoint or every checkpoint of a run (in order of global step) it extracts the features
of the run's probe set, fits every (layer, t, concept) probe and writes into ``out`` (default
``<run>/probes``): ``probes.csv`` / ``probes.json`` (``diffprobe.probes.results``), heatmap PNGs,
``emergence.json`` (where and when each concept becomes decodable), ``decodability_<weights>.png``,
and TensorBoard scalars ``probe_ckpt/<concept>/<layer>/t<tttt>/acc`` in the run's own log
directory at each checkpoint's global step. Cells already in the table are skipped unless
``overwrite``: a second call after more training probes only the new checkpoints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveInt, restricted_number_type

from diffprobe.choices import Method, Pool
from diffprobe.commands.common import CommandError, Device, Weights, as_list, command, flag
from diffprobe.commands.source import Source, load_model, resolve, resolve_device

ProbeSetSize = restricted_number_type("ProbeSetSize", int, [(">=", 10)])  # probes are fitted and tested on a split of it


def _probe_set(source: Source, out: Path, probe_set: str | None, timesteps, data, size: int, seed: int, parts, data_options: dict):
    """(probe set, path it was loaded from or None): the given one, the run's own, the one an
    earlier call saved in ``out``, or a new one made for this model."""
    from diffprobe.data.probe_set import ProbeSet
    from diffprobe.diffusion.timesteps import default_timesteps
    from diffprobe.io.loading import LoadError

    candidates = (
        [Path(probe_set)] if probe_set else [p for p in (source.run_dir and source.run_dir / "probe_set.pt", out / "probe_set.pt") if p]
    )
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        try:
            loaded = ProbeSet.load(found)
        except LoadError as error:
            raise CommandError(str(error)) from error
        # Results stay comparable across calls only on one probe set: what would make another is
        # said to be ignored (--num_images and --seed have defaults, so only where they differ).
        differs = [
            (f"--timesteps {list(timesteps or [])}", bool(timesteps)),
            (f"--data {data}", bool(data)),
            (f"--num_images {size}", size != len(loaded)),
            (f"--seed {seed}", seed != loaded.seed),
        ]
        ignored = [name for name, given in differs if given]
        if ignored:
            print(
                f"probe.py linear: {' and '.join(ignored)} ignored: using the probe set {found} ({len(loaded)} images, seed "
                f"{loaded.seed}, t = {loaded.timesteps.tolist()}); {_why_this_probe_set(found, probe_set, source)}",
                file=sys.stderr,
            )
        return loaded, found
    T = parts.scheduler.config.num_train_timesteps
    grid = list(timesteps) if timesteps else default_timesteps(T)
    outside = sorted({t for t in grid if t >= T})
    if outside:
        raise CommandError(
            f"--timesteps {outside} out of range: {source.files[0].path} has {T} training timesteps, so t must be in [0, {T}) (0 = the clean end)"
        )
    from diffprobe.training.datamodules import ConceptShapesDataModule, HFDataModule

    image_size = parts.unet.config.sample_size
    with flag("--data"):
        if data in (None, "shapes"):
            module = ConceptShapesDataModule(image_size=image_size, heldout_size=size, batch_size=1)
        else:
            module = HFDataModule(data, image_size=image_size, batch_size=1, num_workers=0, **data_options)
        return ProbeSet.from_dataset(module.heldout_dataset(), module.concepts, size=size, timesteps=grid, seed=seed), None


def _why_this_probe_set(found: Path, given: str | None, source: Source) -> str:
    if given:
        return "it is the one --probe_set names"
    if source.run_dir is not None and found == source.run_dir / "probe_set.pt":
        return "it is the run's own: the same images and noise as its live probes"
    return "an earlier call saved it in --out; another --out makes a new one"


def _check_probe_set(probe_set, unet, T: int, where: str) -> None:
    """A probe set (given, the run's own or a new one) that fits the model: t in [0, T), image size, channels."""
    outside = [t for t in probe_set.timesteps.tolist() if not 0 <= t < T]
    if outside:
        raise CommandError(
            f"{where}: timesteps {outside} are outside [0, {T}); this model has {T} training timesteps (t = 0 is the clean end)"
        )
    size = unet.config.sample_size
    expected = (unet.config.in_channels, *(size if isinstance(size, (tuple, list)) else (size, size)))
    if tuple(probe_set.images.shape[1:]) != expected:
        shape = "x".join(map(str, probe_set.images.shape[1:]))
        raise CommandError(
            f"{where}: its images are {shape}, the model takes {'x'.join(map(str, expected))}; use a probe set made for this model"
        )


@command
def linear(
    ckpt: str, out: str | None = None, probe_set: str | None = None, layers: list[str] | str | None = None, pool: Pool = "mean", method: Method = "logistic",
    weights: Weights = "ema", logdir: str | None = None, overwrite: bool = False, device: Device = "auto", batch_size: PositiveInt = 128,
    num_images: ProbeSetSize = 300, timesteps: list[NonNegativeInt] | None = None, seed: int = 0, data: str | None = None, image_column: str = "img",
    concept_columns: tuple[str, ...] = ("label",), heldout_fraction: OpenUnitInterval = 0.05,
) -> Path:  # fmt: skip
    """Linear concept probes per (layer, t, concept) on one checkpoint or every checkpoint of a run.

    Args:
        ckpt: a .ckpt file, a run directory (all its checkpoints, in step order), a 'probe.py export' folder or a diffusers UNet folder
        out: output folder (default: <run>/probes, or probes-<name> beside --ckpt outside a run)
        probe_set: probe_set.pt to use (default: the run's own)
        layers: UNet module names (default: every down / mid / up block)
        pool: how a block's feature map becomes a probe's input
        method: how the probes are fitted
        weights: probe the EMA or the raw weights of a checkpoint
        logdir: TensorBoard directory (default: the run's own)
        overwrite: redo cells already in probes.csv
        batch_size: images per UNet call
        num_images: probe-set size when one is made (at least 10: probes are fitted and tested on a split)
        timesteps: t grid (training indices, 0 = the clean end) when a probe set is made
        seed: seed of a new probe set's images and noise
        data: the images of a new probe set: 'shapes' (ConceptShapes) or a Hugging Face data set / local path
        image_column: --data's image column
        concept_columns: --data's concept columns
        heldout_fraction: share of --data held out when it has no test split
    """

    from diffprobe.capture import check_layers, default_layers
    from diffprobe.probes import results
    from diffprobe.probes.pipeline import probe_unet
    from diffprobe.report import tb

    layers = as_list(layers) or None
    device = resolve_device(device)
    if probe_set and not Path(probe_set).is_file():
        raise CommandError(f"--probe_set {probe_set} does not exist")
    # 1. Every input is checked (and the first model loaded, for T, image size and block names)
    #    before out is made, so a bad call leaves nothing behind that a corrected rerun would trip on.
    source = resolve(ckpt)
    folder = Path(out) if out else (source.run_dir / "probes" if source.run_dir else source.path.parent / f"probes-{source.path.stem}")
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"--out {folder} is a file; give a folder (new, or one an earlier probe.py linear wrote)")
    first = load_model(source.files[0], weights, device)
    T = first.scheduler.config.num_train_timesteps
    with flag("--layers"):
        check_layers(first.unet, layers or default_layers(first.unet))
    data_options = {"image_column": image_column, "concept_columns": list(concept_columns), "heldout_fraction": heldout_fraction}
    probes, found = _probe_set(source, folder, probe_set, timesteps, data, num_images, seed, first, data_options)
    _check_probe_set(probes, first.unet, T, f"probe set {found}" if found is not None else "the new probe set")

    # 2. Write: the probe set, then each checkpoint's rows, heatmaps and TensorBoard scalars.
    folder.mkdir(parents=True, exist_ok=True)
    if found is None:
        probes.save(folder / "probe_set.pt")
    rows = results.read_rows(folder)
    done = {results.cell(r) for r in rows}
    logdir = Path(logdir) if logdir else source.run_dir
    writer = None
    probed: set[int] = set()  # steps of the checkpoints probed in this call
    # The checkpoints of a run share one architecture: the first one's block names stand for all.
    names = layers or default_layers(first.unet)
    for index, entry in enumerate(source.files):
        print(f"probe.py linear: {entry.name} ({index + 1} of {len(source.files)})", file=sys.stderr)
        same_step = {r["checkpoint"] for r in rows if int(r["step"]) == entry.step and r["weights"] == weights} - {entry.name}
        if same_step and not overwrite:  # e.g. last.ckpt, a copy of the newest step=N.ckpt
            print(f"probe.py linear: {entry.name} skipped: step {entry.step} is already probed as {sorted(same_step)[0]}", file=sys.stderr)
            continue
        cells = {
            (entry.name, weights, layer, str(t), c) for layer in names for t in probes.timesteps.tolist() for c in probes.concept_names
        }
        if cells <= done and not overwrite:
            continue  # decided before loading it: a rerun after more training loads only the new checkpoints
        parts = first if index == 0 and first is not None else load_model(entry, weights, device)
        first = None  # let the first model go once it is probed (or skipped)
        with flag("--layers"):
            check_layers(parts.unet, names)
        # A conditional UNet gets the empty caption: probes read the image, not the caption.
        condition = parts.empty_caption()
        table = probe_unet(parts.unet, parts.scheduler, probes, names, pool, method, batch_size, condition)
        new_rows = table.rows(step=parts.step, checkpoint=entry.name, weights=weights)
        probed.add(parts.step)
        rows = [r for r in rows if results.cell(r) not in cells] + new_rows
        done |= cells
        results.write_rows(folder, rows)
        _heatmaps(table, folder / "heatmaps", parts.step, weights)
        if logdir is not None:
            writer = writer or _writer(logdir)
            for r in new_rows:
                writer.add_scalar(tb.probe_tag(tb.CKPT_PROBE_PREFIX[weights], r["concept"], r["layer"], r["t"]), r["accuracy"], parts.step)
    rows = results.read_rows(folder)
    if rows:
        (folder / "emergence.json").write_text(json.dumps(results.emergence([r for r in rows if r["weights"] == weights]), indent=1))
        for kind in sorted({r["weights"] for r in rows}):
            curves = results.step_curves(rows, kind, T)
            made = _figures(curves, folder, kind)
            if logdir is not None and kind == weights and probed:  # only what this call measured: TensorBoard keeps no duplicates
                writer = writer or _writer(logdir)
                for step in sorted(probed):
                    summary = zip(curves.concepts, curves.max_decodable_t(step))
                    tb.log_scalars(writer, {tb.probe_summary_tag(tb.CKPT_PROBE_PREFIX[kind], c): -1 if t is None else t for c, t in summary}, step)
                for name, figure in made.items():
                    writer.add_figure(tb.probe_summary_figure_tag(tb.CKPT_PROBE_PREFIX[kind], name), figure, max(curves.best))
        _print_summary(results.step_curves(rows, weights, T), weights)
    if writer is not None:
        writer.close()
    print(f"probe.py linear: {len(rows)} probe results (probes.csv, emergence.json, heatmaps/, decodability_*.png) -> {folder}")
    return folder


def _print_summary(curves, weights: str) -> None:
    """Per concept: how far into the noise it is decodable at the last step, and since when."""
    steps = sorted(curves.best)
    last = curves.max_decodable_t(steps[-1])
    first = [next((s for s in steps if curves.max_decodable_t(s)[k] is not None), None) for k in range(len(curves.concepts))]
    width = max(len("concept"), *map(len, curves.concepts))
    print(f"\n{'concept':<{width}}  decodable up to t (step {steps[-1]}, {weights})  first decodable at step")
    for concept, t, step in zip(curves.concepts, last, first):
        print(f"{concept:<{width}}  {'none' if t is None else t:>33}  {'never' if step is None else step:>23}")
    print()


def _writer(logdir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(logdir))  # a new event file beside the run's own: nothing is overwritten


def _figures(curves, out: Path, weights: str) -> dict:
    """``decodability_<weights>.png`` (the last step) and, over several checkpoints,
    ``decodability_<weights>_over_training.png`` and ``decodable_t_<weights>_over_training.png``;
    returns the over-training figures by name (TensorBoard gets them too)."""
    from diffprobe.probes import figures

    step = max(curves.best)
    title = f"concept decodability by timestep ({weights} weights, step {step}; best layer at each t)"
    figures.decodability_curves(curves.best[step], curves.decodable[step], curves.timesteps, curves.concepts, title).savefig(out / f"decodability_{weights}.png")
    if len(curves.best) < 2:
        return {}
    note = f"{weights} weights, {len(curves.best)} checkpoints"
    made = {
        "decodability": figures.decodability_over_training(
            curves.best, curves.decodable, curves.timesteps, curves.concepts, f"decodability by timestep over training (best layer; {note})"
        ),
        "decodable_t": figures.decodable_t_over_training(
            {s: curves.max_decodable_t(s) for s in curves.best}, curves.concepts, f"largest significantly decodable t ({note})", curves.num_train_timesteps
        ),
    }
    for name, figure in made.items():
        figure.savefig(out / f"{name}_{weights}_over_training.png")
    return made


def _heatmaps(table, folder: Path, step: int, weights: str) -> None:
    from diffprobe.probes import figures

    folder.mkdir(parents=True, exist_ok=True)
    for _, concept, figure in figures.probe_heatmaps(table, f"{weights}, step {step}", by=("concept",)):
        figure.savefig(folder / f"step{step:06d}_{weights}_{concept}.png")
