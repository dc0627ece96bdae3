"""``probe.py linear``: linear concept probes on saved checkpoints (or a pretrained diffusers UNet).

For one checkpoint or every checkpoint of a run (in order of global step) it extracts the features
of the run's probe set, fits every (layer, t, concept) probe and writes, into ``--out`` (default
``<run>/probes``): ``probes.csv`` / ``probes.json`` (one row per step, weights, layer, t, concept),
heatmap PNGs, ``emergence.json`` (where and when each concept becomes decodable), and TensorBoard
scalars ``probe_ckpt/<concept>/<layer>/t<tttt>/acc`` in the run's own log directory at each
checkpoint's global step. Cells already in the CSV are skipped unless ``overwrite``.
"""

from __future__ import annotations

import csv
import json
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import track

from diffprobe import checkpoint, tb, viz
from diffprobe.capture import default_layers
from diffprobe.data.probe_set import ProbeSet, default_timesteps
from diffprobe.probes.pipeline import ProbeTable, probe_unet

FIELDS = ["step", "checkpoint", "weights", "layer", "t", "concept", "accuracy", "chance", "control_accuracy", "selectivity", "p_value", "significant", "ci_low", "ci_high", "n"]


@dataclass
class Target:
    """One set of weights to probe: a diffprobe checkpoint or a diffusers UNet folder."""

    name: str
    step: int
    path: Path


def _run_dir(path: Path) -> Path | None:
    path = path.resolve()
    if path.is_dir() and (path / "checkpoints").is_dir():
        return path
    if path.is_file() and path.parent.name == "checkpoints":
        return path.parent.parent
    return None


def _is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "unet" / "config.json").exists() or (path / "config.json").exists())


def _load_rows(csv_path: Path) -> list[dict]:
    if not csv_path.exists():
        return []
    with csv_path.open() as handle:
        return list(csv.DictReader(handle))


def _write_rows(out: Path, rows: list[dict]) -> None:
    with (out / "probes.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "probes.json").write_text(json.dumps(rows, indent=1))


def emergence(rows: list[dict]) -> dict:
    """Per concept: at the last step, the t range where it is decodable (significantly above chance
    at some layer); and, for each t, the first step at which it became decodable."""
    summary: dict[str, dict] = {}
    steps = sorted({int(r["step"]) for r in rows})
    for concept in sorted({r["concept"] for r in rows}):
        mine = [r for r in rows if r["concept"] == concept and str(r["significant"]) == "True"]
        last = [int(r["t"]) for r in mine if int(r["step"]) == steps[-1]]
        first_step = {}
        for t in sorted({int(r["t"]) for r in rows}):
            decoded = sorted(int(r["step"]) for r in mine if int(r["t"]) == t)
            first_step[str(t)] = decoded[0] if decoded else None
        summary[concept] = {
            "decodable_t_at_last_step": sorted(set(last)),
            "max_decodable_t": max(last) if last else None,
            "first_step_decodable_by_t": first_step,
        }
    return summary


def _targets(source: Path) -> list[Target]:
    if _is_diffusers_folder(source):
        return [Target(name=source.name, step=0, path=source)]
    return [Target(name=p.name, step=checkpoint.checkpoint_step(p), path=p) for p in checkpoint.find_checkpoints(source)]


def _build_probe_set(args, image_size: int, num_train_timesteps: int) -> ProbeSet:
    from diffprobe.data.module import ConceptShapesDataModule, HFDataModule

    if args.data in (None, "shapes"):
        data = ConceptShapesDataModule(image_size=image_size, heldout_size=args.num_images, batch_size=1)
    else:
        data = HFDataModule(
            args.data, image_column=args.image_column, concept_columns=args.concept_columns, image_size=image_size,
            heldout_fraction=args.heldout_fraction, batch_size=1, num_workers=0,
        )
    timesteps = args.timesteps or default_timesteps(num_train_timesteps)
    return ProbeSet.from_dataset(data.heldout_dataset(), data.concepts, size=args.num_images, timesteps=timesteps, seed=args.seed)


def _load(target: Target, device: str):
    """(module or UNet, scheduler, global step) for a checkpoint or a diffusers folder."""
    if target.path.is_dir():
        from diffusers import DDPMScheduler

        from diffprobe.unet import load_pretrained

        loaded = load_pretrained(str(target.path), conditional=False)
        return loaded.unet.to(device), loaded.scheduler or DDPMScheduler(), 0
    try:
        module = checkpoint.load_module(target.path).to(device)
    except checkpoint.LoadError as error:  # damaged, foreign or unsafe: a clean exit naming the file
        raise SystemExit(str(error)) from error
    return module, module.scheduler, module.global_step_at_save


def _check_options(args) -> None:
    """Flags that need no model: checked before anything is loaded."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.num_images < 10:
        raise ValueError(f"--num-images must be at least 10 (probes are fitted and tested on a split of them), got {args.num_images}")
    if args.timesteps and min(args.timesteps) < 0:
        raise ValueError(f"--timesteps must be training indices t >= 0 (0 = the clean end), got {sorted(args.timesteps)}")
    if not 0 < args.heldout_fraction < 1:
        raise ValueError(f"--heldout-fraction must be in (0, 1), got {args.heldout_fraction}")
    if args.probe_set and not Path(args.probe_set).is_file():
        raise FileNotFoundError(f"--probe-set {args.probe_set} does not exist")


def _check_probe_set(probe_set: ProbeSet, unet, num_train_timesteps: int, where: str) -> None:
    """A probe set (given, the run's own or a new one) that fits the model: t in [0, T), image size, channels."""
    timesteps = probe_set.timesteps.tolist()
    outside = [t for t in timesteps if not 0 <= t < num_train_timesteps]
    if outside:
        raise ValueError(
            f"{where}: timesteps {outside} are outside [0, {num_train_timesteps}); this model has {num_train_timesteps} "
            f"training timesteps (t = 0 is the clean end), so give t from 0 to {num_train_timesteps - 1}"
        )
    size = unet.config.sample_size
    expected = (unet.config.in_channels, *(size if isinstance(size, (tuple, list)) else (size, size)))
    if tuple(probe_set.images.shape[1:]) != expected:
        shape = "x".join(map(str, probe_set.images.shape[1:]))
        raise ValueError(f"{where}: its images are {shape}, the model takes {'x'.join(map(str, expected))}; use a probe set made for this model")


def run_linear(args) -> Path:
    # 1. Every input is checked (and the first model loaded, for T, image size and block names)
    #    before --out is made, so a bad call leaves nothing behind that a corrected rerun would trip on.
    source = Path(args.ckpt)
    if not source.exists():
        raise FileNotFoundError(f"no checkpoint, run directory or diffusers folder at {source}")
    _check_options(args)
    targets = _targets(source)
    run_dir = _run_dir(source)
    out = Path(args.out) if args.out else (run_dir / "probes" if run_dir else source.parent / f"probes-{source.stem}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder (new, or one an earlier probe.py linear wrote)")

    # The probe set: given, the run's own, the one an earlier call saved here, or a new one.
    candidates = [Path(args.probe_set)] if args.probe_set else [p for p in (run_dir and run_dir / "probe_set.pt", out / "probe_set.pt") if p]
    found = next((p for p in candidates if p.is_file()), None)
    try:
        probe_set = ProbeSet.load(found) if found is not None else None
    except checkpoint.LoadError as error:
        raise SystemExit(str(error)) from error
    if found is not None and (args.timesteps or args.data):
        ignored = " and ".join(flag for flag, given in (("--timesteps", args.timesteps), ("--data", args.data)) if given)
        print(f"probe.py linear: {ignored} ignored: using the probe set {found} (t = {probe_set.timesteps.tolist()})", file=sys.stderr)

    first = _load(targets[0], args.device)
    unet = first[0].unet if hasattr(first[0], "unet") else first[0]
    num_train_timesteps = first[1].config.num_train_timesteps
    _check_layers(args.layers or default_layers(unet), unet)
    new_probe_set = probe_set is None
    if new_probe_set:
        timesteps = args.timesteps or default_timesteps(num_train_timesteps)
        outside = sorted({t for t in timesteps if t >= num_train_timesteps})
        if outside:
            raise ValueError(
                f"--timesteps {outside} out of range: {targets[0].path} has {num_train_timesteps} training timesteps, "
                f"so t must be in [0, {num_train_timesteps}) (0 = the clean end)"
            )
        probe_set = _build_probe_set(args, unet.config.sample_size, num_train_timesteps)  # checks --data and its columns
    _check_probe_set(probe_set, unet, num_train_timesteps, f"probe set {found}" if found is not None else "the new probe set")

    # 2. Write: the probe set, then each checkpoint's rows, heatmaps and TensorBoard scalars.
    out.mkdir(parents=True, exist_ok=True)
    if new_probe_set:
        probe_set.save(out / "probe_set.pt")
    rows = _load_rows(out / "probes.csv")
    done = {(r["checkpoint"], r["weights"], r["layer"], r["t"], r["concept"]) for r in rows}
    writer = None
    logdir = Path(args.logdir) if args.logdir else run_dir
    for index, target in enumerate(track(targets, description=f"probing {len(targets)} checkpoint(s)")):
        loaded, scheduler, step = first if index == 0 else _load(target, args.device)
        first = None  # let the first model go once it is probed
        is_module = hasattr(loaded, "unet")
        unet = loaded.unet if is_module else loaded
        layers = args.layers or default_layers(unet)
        _check_layers(layers, unet)
        cells = {(target.name, args.weights, layer, str(t), c) for layer in layers for t in probe_set.timesteps.tolist() for c in probe_set.concept_names}
        if cells <= done and not args.overwrite:
            continue
        with loaded.ema_weights() if is_module and args.weights == "ema" else nullcontext():
            # A conditional UNet gets the empty caption: probes read the image, not the caption.
            condition = loaded.caption_encoder.unconditional(1) if is_module and loaded.caption_encoder is not None else None
            table = probe_unet(unet, scheduler, probe_set, layers, args.pool, args.method, args.batch_size, condition)
        new_rows = table.rows(step=step, checkpoint=target.name, weights=args.weights)
        rows = [r for r in rows if (r["checkpoint"], r["weights"], r["layer"], r["t"], r["concept"]) not in cells] + new_rows
        done |= cells
        _write_rows(out, rows)
        _heatmaps(table, out / "heatmaps", step, args.weights)
        if logdir is not None:
            writer = writer or _writer(logdir)
            for r in new_rows:
                writer.add_scalar(tb.probe_tag("probe_ckpt", r["concept"], r["layer"], r["t"]), r["accuracy"], step)
    if writer is not None:
        writer.close()
    rows = _load_rows(out / "probes.csv")
    if rows:
        (out / "emergence.json").write_text(json.dumps(emergence(rows), indent=1))
        _curves(rows, out)
    return out


def _check_layers(layers: list[str], unet) -> None:
    missing = [n for n in layers if n not in dict(unet.named_modules())]
    if missing:
        raise ValueError(f"UNet has no module(s) {missing}; block names are {default_layers(unet)}")


def _curves(rows: list[dict], out: Path) -> None:
    """``decodability_<weights>.png``: per concept, the best layer's accuracy over t, at the last step."""
    import matplotlib.pyplot as plt

    for weights in sorted({r["weights"] for r in rows}):
        mine = [r for r in rows if r["weights"] == weights]
        step = max(int(r["step"]) for r in mine)
        last = [r for r in mine if int(r["step"]) == step]
        timesteps = sorted({int(r["t"]) for r in last})
        concepts = list(dict.fromkeys(r["concept"] for r in last))
        best = torch.zeros(len(timesteps), len(concepts))
        chance = torch.zeros(len(concepts))
        for r in last:
            j, k = timesteps.index(int(r["t"])), concepts.index(r["concept"])
            best[j, k] = max(best[j, k], float(r["accuracy"]))
            chance[k] = float(r["chance"])
        figure = viz.decodability_curves(best, chance, timesteps, concepts, f"concept decodability by timestep ({weights} weights, step {step})")
        figure.savefig(out / f"decodability_{weights}.png")
        plt.close(figure)


def _writer(logdir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(logdir))  # a new event file beside the run's own: nothing is overwritten


def _heatmaps(table: ProbeTable, folder: Path, step: int, weights: str) -> None:
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for k, concept in enumerate(table.concepts):
        figure = viz.accuracy_heatmap(
            table.accuracy[:, :, k], table.layers, table.timesteps, f"{concept}: probe accuracy ({weights}, step {step})",
            chance=float(table.chance[k]), significant=table.significant[:, :, k],
        )
        figure.savefig(folder / f"step{step:06d}_{weights}_{concept}.png")
        plt.close(figure)


def add_linear_parser(commands) -> None:
    linear = commands.add_parser("linear", allow_abbrev=False, help="linear concept probes per (layer, t, concept) on checkpoints")
    linear.add_argument("--ckpt", required=True, help="a .ckpt file, a run directory (all its checkpoints), or a diffusers UNet folder")
    linear.add_argument("--out", help="output folder (default: <run>/probes)")
    linear.add_argument("--probe-set", help="probe_set.pt to use (default: the run's own)")
    linear.add_argument("--layers", nargs="+", help="UNet module names (default: every down/mid/up block)")
    linear.add_argument("--pool", choices=["mean", "grid2", "grid4"], default="mean")
    linear.add_argument("--method", choices=["logistic", "ridge"], default="logistic")
    linear.add_argument("--weights", choices=["ema", "raw"], default="ema")
    linear.add_argument("--logdir", help="TensorBoard directory (default: the run's own)")
    linear.add_argument("--overwrite", action="store_true", help="redo cells already in probes.csv")
    linear.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    linear.add_argument("--batch-size", type=int, default=128)
    linear.add_argument("--num-images", type=int, default=300, help="probe-set size when one is built")
    linear.add_argument("--timesteps", type=int, nargs="+", help="t grid when a probe set is built")
    linear.add_argument("--seed", type=int, default=0)
    linear.add_argument("--data", help="for a diffusers folder: 'shapes' or a Hugging Face data set / local path")
    linear.add_argument("--image-column", default="img")
    linear.add_argument("--concept-columns", nargs="+", default=["label"])
    linear.add_argument("--heldout-fraction", type=float, default=0.05, help="share held out when the data set has no test split")
    linear.set_defaults(handler=run_linear)
