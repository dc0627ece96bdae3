"""``probe.py hidden``: hidden capabilities (Park et al., NeurIPS 2024) over training, per timestep.

For each run (trained on ConceptShapes with a held-out combination, e.g. ``[[small, blue]]``) and
each of its checkpoints in step order, it prompts the held-out combination plainly, over-prompted,
with a linear intervention on the caption embedding and with probe-direction steering in the UNet,
and reads the samples with the concept reader of the run's concept signal; it switches the prompt
to find when each held-out value is decided (t_lock), and fits probes on trained combinations to
see whether the held-out one is represented per layer and t (against x_t and the untrained UNet).
``out`` gets ``runs/<run>.json`` (every checkpoint's record; a rerun measures only what is
missing), ``results.json`` (learning speed, the hidden window, per-step rates), the figures, and
each run's TensorBoard gets ``hidden/<variant>`` at each checkpoint's step.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

from diffprobe.choices import Device, Weights
from diffprobe.commands.common import CommandError, as_list, command, flag
from diffprobe.commands.source import Source, resolve, resolve_device


def log(message: str) -> None:
    print(f"probe.py hidden: {message}", file=sys.stderr)


@dataclass(frozen=True)
class StudyRun:
    """One run of the study: its checkpoints and its data design (from its config.yaml)."""

    name: str
    source: Source
    design: dict  # heldout_combinations, colour_contrast, size_difference, image_size, seed


def run_design(source: Source) -> dict:
    """The ConceptShapes design a run was trained with; a CommandError when it has no held-out combination."""
    import yaml

    config = source.run_dir / "config.yaml" if source.run_dir else None
    if config is None or not config.is_file():
        raise CommandError(f"--ckpt {source.path}: give a run directory (with its config.yaml): the study reads the run's held-out combination from it")
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    if not str(data.get("class_path", "")).endswith("ConceptShapesDataModule"):
        raise CommandError(f"--ckpt {source.path} was not trained on ConceptShapes; the study needs its held-out combinations and concept reader")
    args = data.get("init_args") or {}
    if not args.get("heldout_combinations"):
        raise CommandError(
            f"--ckpt {source.path} held no combination out of training; train with --data.init_args.heldout_combinations '[[small, blue]]' "
            "(configs/hidden_capabilities.yaml)"
        )
    return {
        "heldout_combinations": [list(c) for c in args["heldout_combinations"]], "colour_contrast": float(args.get("colour_contrast", 1.0)),
        "size_difference": float(args.get("size_difference", 1.0)), "image_size": int(args.get("image_size", 32)), "seed": int(args.get("seed", 0)),
    }  # fmt: skip


def run_folders(given: str) -> list[str]:
    """``given`` itself when it is a run (or a checkpoint), else every run under it (a sweep's folder)."""
    path = Path(given)
    if not path.is_dir() or (path / "config.yaml").is_file() or (path / "checkpoints").is_dir():
        return [given]
    found = sorted(str(config.parent) for config in path.glob("**/config.yaml") if (config.parent / "checkpoints").is_dir())
    return found or [given]


def study_runs(ckpt: list[str]) -> list[StudyRun]:
    """The runs named (or found under a folder named), each checked, in order of concept signal;
    they must hold out one combination."""
    runs = []
    for given in [run for name in ckpt for run in run_folders(name)]:
        source = resolve(given)
        if source.run_dir is None or len(source.files) < 2:
            raise CommandError(f"--ckpt {given}: give a run directory (the study follows every checkpoint of a run), not one checkpoint")
        if source.files[0].step != 0:
            raise CommandError(f"--ckpt {given} has no step-0 checkpoint (the untrained UNet, the probes' baseline); train.py keeps one in checkpoints/step=000000.ckpt")
        runs.append(StudyRun(f"{source.run_dir.parent.name}-{source.run_dir.name}", source, run_design(source)))
    combinations = {str(r.design["heldout_combinations"][0]) for r in runs}
    if len(combinations) > 1:
        raise CommandError(f"--ckpt: the runs hold out different combinations ({sorted(combinations)}); a sweep compares runs of one combination")
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        raise CommandError(f"--ckpt names a run twice or two runs of one name ({names})")
    return sorted(runs, key=lambda r: (r.design["colour_contrast"], r.design["size_difference"], r.name))


@command
def hidden(
    ckpt: str | list[str], out: str = "hidden_capabilities", num_images: PositiveInt = 64, steps: PositiveInt = 50, lock_in_images: PositiveInt = 32,
    switch_times: tuple[NonNegativeInt, ...] = (10, 25, 50, 100, 200, 300, 500, 700),
    layers: tuple[str, ...] = ("down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"),
    timesteps: tuple[NonNegativeInt, ...] = (10, 50, 100, 200, 300, 500, 700), probe_images: PositiveInt = 600, heldout_probe_images: PositiveInt = 96,
    over_prompt_scale: PositiveFloat = 2.0,
    embedding_length: PositiveFloat = 1.0, steer_alpha: PositiveFloat = 8.0, steer_layer: str = "up_blocks.1", steer_t: NonNegativeInt = 100,
    seed: int = 0, reader_steps: PositiveInt = 3000, reader_images: PositiveInt = 20_000, weights: Weights = "ema", device: Device = "auto",
    batch_size: PositiveInt = 64,
) -> Path:  # fmt: skip
    """Hidden capabilities over training: the held-out combination under plain prompting and three interventions, with learning speed, lock-in and probes per layer and t.

    Args:
        ckpt: a run directory trained with a held-out combination (configs/hidden_capabilities.yaml), a folder of such runs (one per concept signal), or a list of them
        out: output folder (reused by a rerun with the same settings, which measures only what is missing)
        num_images: held-out prompts sampled per variant and checkpoint
        steps: DDPM sampling steps
        lock_in_images: held-out prompts switched per concept and checkpoint
        switch_times: prompt-switch times t_s (ascending)
        layers: UNet layers probed on held-out images
        timesteps: t grid of the probes
        probe_images: training-split images the probes are fitted on (two thirds) and checked on (a third)
        heldout_probe_images: images of the held-out combination the probes are scored on
        over_prompt_scale: over-prompting multiplies the held-out words' caption-embedding rows by it
        embedding_length: the linear intervention moves each held-out word's row this many times along (its row - the mean of its concept's other values' rows)
        steer_alpha: steering shift, in spreads of the probe features per held-out value
        steer_layer: the layer steered (one of --layers)
        steer_t: the t whose probe directions are steered along (one of --timesteps)
        reader_steps: training steps of a new concept reader (one per concept signal, cached)
        reader_images: training images of a new concept reader
        batch_size: images per sampling batch (doubled under classifier-free guidance)
    """
    from diffprobe.commands.hidden_output import measure_and_write
    from diffprobe.commands.writing import guarded_output
    from diffprobe.hidden.generate import InterventionSettings
    from diffprobe.hidden.study import StudySettings

    if not as_list(ckpt):
        raise CommandError("--ckpt: give at least one run directory")
    if list(switch_times) != sorted(set(switch_times)):
        raise CommandError(f"--switch_times {list(switch_times)} must be ascending and distinct")
    runs = study_runs(as_list(ckpt))
    interventions = InterventionSettings(over_prompt_scale, embedding_length, steer_alpha, steer_layer, steer_t)
    with flag("--steer_t/--steer_layer"):
        settings = StudySettings(num_images, steps, lock_in_images, tuple(switch_times), tuple(layers), tuple(timesteps), probe_images, heldout_probe_images, seed, interventions)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"--out {folder} is a file; give a folder (new, or one an earlier probe.py hidden wrote)")
    with guarded_output(folder, "hidden"):
        return measure_and_write(runs, settings, folder, weights=weights, device=resolve_device(device), batch_size=batch_size, reader=(reader_steps, reader_images))
