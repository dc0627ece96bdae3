"""``probe.py fidelity``: does the model *render* each concept, and from which training step?

For one checkpoint or every checkpoint of a run (in step order) it samples fixed held-out captions
(conditional models) or images (unconditional), reads every sample with the concept reader of the
data (trained once per data configuration and cached), and writes into ``out`` (default
``<run>/fidelity``): ``fidelity.csv`` / ``fidelity.json`` (per checkpoint and concept: the share of
samples showing the caption's value with its Wilson interval, or the total variation to held-out
data; ``rendered_at_step`` per concept in the summary), ``fidelity_<weights>.png``, and TensorBoard
``fidelity_ckpt/<concept>`` at each checkpoint's step. Like ``linear``, a rerun measures only what
the table does not hold yet.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from jsonargparse.typing import OpenUnitInterval, PositiveInt

from diffprobe.choices import Device, Sampler, Weights
from diffprobe.commands.common import CommandError, command, flag
from diffprobe.commands.source import Source, load_model, resolve, resolve_device


def log(message: str) -> None:
    print(f"probe.py fidelity: {message}", file=sys.stderr)


@dataclass(frozen=True)
class FidelitySettings:
    """What makes two calls' numbers comparable: a table holds one setting (or ``--overwrite``)."""

    num_captions: int
    steps: int
    sampler: Sampler
    guidance: float | None
    seed: int
    data: str
    memorisation_images: int | None


@dataclass(frozen=True)
class FidelityCall:
    source: Source
    folder: Path
    logdir: Path | None
    weights: Weights
    device: str
    batch_size: int
    overwrite: bool
    settings: FidelitySettings


def _plan(model, data, settings: FidelitySettings):
    """The fixed sampling plan: held-out captions and their labels (conditional), or as many
    unconditional images; refused before anything is sampled when the model cannot take them."""
    from diffprobe.fidelity.measure import SamplePlan

    heldout = data.module.heldout_dataset()
    count = settings.num_captions
    if len(heldout) < count:
        raise CommandError(f"--num_captions {count}: the held-out data has only {len(heldout)} examples")
    captions = labels = None
    if model.conditional:
        import torch

        items = [heldout[i] for i in range(count)]
        captions = tuple(item["caption"] for item in items)
        with flag(f"captions of --data {settings.data}"):
            model.caption_encoder.tokenizer.check_words(captions)
        labels = torch.stack([item["labels"] for item in items])
    return SamplePlan(
        num_images=count,
        seed=settings.seed,
        num_inference_steps=settings.steps,
        sampler=settings.sampler,
        guidance_scale=settings.guidance,
        captions=captions,
        labels=labels,
    )


def _check_earlier(call: FidelityCall) -> None:
    """Rows already in ``out`` were measured with the same settings (or ``--overwrite``)."""
    from diffprobe.fidelity import results

    earlier = results.table(call.folder).read_summary().get("settings", {}).get(call.weights)
    if earlier is not None and earlier != asdict(call.settings) and not call.overwrite:
        changed = sorted(k for k, v in asdict(call.settings).items() if earlier.get(k) != v)
        raise CommandError(f"{call.folder} holds fidelity measured with other settings ({', '.join(changed)}); give a new --out, or --overwrite true")


@command
def fidelity(
    ckpt: str, out: str | None = None, num_captions: PositiveInt = 64, steps: PositiveInt = 50, sampler: Sampler = "ddpm",
    guidance: float | None = None, seed: int = 0, reader: str | None = None, reader_steps: PositiveInt = 3000, reader_images: PositiveInt = 20_000,
    memorisation: bool = False, memorisation_images: PositiveInt = 5000, data: str | None = None, image_column: str = "img",
    concept_columns: tuple[str, ...] = ("label",), heldout_fraction: OpenUnitInterval = 0.05, weights: Weights = "ema",
    logdir: str | None = None, overwrite: bool = False, device: Device = "auto", batch_size: PositiveInt = 64,
) -> Path:  # fmt: skip
    """Concept fidelity per checkpoint: the share of samples showing each caption's concept value
    (conditional) or the total variation to held-out data (unconditional), judged by a concept reader.

    Args:
        ckpt: a .ckpt, a run directory (every checkpoint, in step order) or a 'probe.py export' folder
        out: output folder (default: <run>/fidelity, or fidelity-<name> beside --ckpt outside a run); reused by later calls
        num_captions: held-out captions sampled (conditional) or images sampled (unconditional), the same at every checkpoint
        steps: sampling steps (at most the model's training timesteps)
        sampler: the reverse process
        guidance: classifier-free guidance scale (default: the model's)
        seed: the samples' seed
        reader: a concept_reader.pt to judge with (default: the cached reader of the data, trained when missing)
        reader_steps: training steps of a new concept reader
        reader_images: training images of a new concept reader
        memorisation: also the share of samples memorised from the training data (nearest training image closer than a third of the second nearest)
        memorisation_images: training images compared with (the first ones of the training split)
        data: the data behind the captions and the reader: 'shapes' (ConceptShapes) or a Hugging Face data set / local path
        overwrite: measure again what fidelity.csv already holds
        batch_size: images per sampling batch (doubled under classifier-free guidance)
    """
    from diffprobe.commands.concept_data import load_data, load_reader
    from diffprobe.commands.fidelity_output import measure_and_write
    from diffprobe.commands.writing import guarded_output

    if reader and not Path(reader).is_file():
        raise CommandError(f"--reader {reader} is not a file; give a concept_reader.pt")
    source = resolve(ckpt)
    folder = source.output_folder(out, "fidelity", "fidelity")
    device = resolve_device(device)
    first = load_model(source.files[0], weights, device)
    if steps > first.num_train_timesteps:
        raise CommandError(f"--steps {steps}: the model has {first.num_train_timesteps} training timesteps, so it samples in at most that many steps")
    settings = FidelitySettings(num_captions, steps, sampler, guidance, seed, data or "shapes", memorisation_images if memorisation else None)
    call = FidelityCall(source, folder, source.logdir(logdir), weights, device, batch_size, overwrite, settings)
    options = {"image_column": image_column, "concept_columns": list(concept_columns), "heldout_fraction": heldout_fraction}
    with flag("--data"):
        concept_data = load_data(source, first, data, options, num_captions, reader_images)
    if not concept_data.concepts:
        raise CommandError(f"--data {settings.data} has no concept columns: fidelity reads concepts off samples; give --concept_columns")
    plan = _plan(first, concept_data, settings)
    _check_earlier(call)
    judge = load_reader(Path(reader) if reader else None, concept_data, steps=reader_steps, seed=seed, device=device, command="fidelity")
    with guarded_output(folder, "fidelity"):
        return measure_and_write(call, first, plan, judge, concept_data)
