"""``probe.py intervene``: when is a concept *decided*, next to when it is *decodable*.

Two interventions, judged on final images by a concept reader (``diffprobe.intervene``):

- ``--mode switch`` (conditional models): caption A down to a switch time, then caption B (A with
  one concept changed); the share of images showing B's value per switch time (CIS) and the
  lock-in time t_lock per concept.
- ``--mode steer`` (any diffprobe model): shift a layer's features along a fitted probe's
  class-difference direction during a window of timesteps, against a random direction of the same
  length.

For one checkpoint or every checkpoint of a run it writes into ``out`` (default
``<run>/intervene``): ``intervene.csv`` / ``intervene.json``, PNG figures, example images, the
concept reader it trained (``concept_reader.pt``, reused by later calls), and TensorBoard in the
run: ``intervene/<concept>/cis`` and ``.../steer`` figures and ``intervene/<concept>/t_lock``
scalars at each checkpoint's global step, plus ``Overview/decodable_vs_decided``. Like
``probe.py linear``, a rerun measures only what is not in the table yet.

The command layer is four modules: this one reads the flags and checks what they alone can say;
``intervene_inputs`` loads the first model, the data, the probe results and the concept reader;
``intervene_plans`` turns the checked flags into each concept's frozen plan
(``diffprobe.intervene.plans``) and carries the plans out over the checkpoints with the core's
pure measuring functions (``diffprobe.intervene.measure``); ``intervene_output`` writes. Every bad
input is refused before ``--out`` is made, a reader trained or anything sampled.
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveFloat, PositiveInt

from diffprobe.choices import InterventionMode, SamplingSchedule
from diffprobe.commands.common import CommandError, Device, DType, Weights, as_list, command, flag
from diffprobe.commands.source import Source, resolve, resolve_device


@command
def intervene(
    ckpt: str, mode: InterventionMode = "switch", out: str | None = None, concepts: list[str] | str | None = None, num_captions: PositiveInt = 64,
    switch_times: list[NonNegativeInt] | None = None, pairs: list[tuple[str, str]] | None = None, schedule: SamplingSchedule = "uniform",
    steps: PositiveInt = 50, lam: PositiveFloat = 60.0, target: str | None = None, source: str | None = None, layer: str | None = None,
    t: NonNegativeInt | None = None, alphas: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0), windows: list[tuple[NonNegativeInt, PositiveInt]] | None = None,
    probes: str | None = None, reader: str | None = None, reader_steps: PositiveInt = 3000, reader_images: PositiveInt = 20_000, data: str | None = None, image_column: str = "img",
    concept_columns: tuple[str, ...] = ("label",), heldout_fraction: OpenUnitInterval = 0.05, weights: Weights = "ema",
    guidance: float | None = None, logdir: str | None = None, overwrite: bool = False, device: Device = "auto", dtype: DType = "float32",
    batch_size: PositiveInt = 64, seed: int = 0,
) -> Path:  # fmt: skip
    """Causal timing: prompt-switch insertion (CIS, t_lock) or probe-direction steering, per concept.

    Args:
        ckpt: a .ckpt, a run directory (every checkpoint, in step order), a 'probe.py export' folder, or (switch with --pairs) a Stable Diffusion folder
        mode: switch: caption A, then B from the switch time on; steer: add a probe's direction to a layer during a window
        out: output folder (default: <run>/intervene, or intervene-<name> beside --ckpt outside a run); reused by later calls
        concepts: concepts to intervene on (default: all of the data's)
        num_captions: images per concept: caption pairs (switch) or steered images (steer), from the held-out split
        switch_times: switch times t_s (training indices in [0, T], T = switched before the first step; default: the probe set's grid)
        pairs: explicit [caption A, caption B] pairs instead of generated ones (e.g. for Stable Diffusion; scored when they are ConceptShapes captions)
        schedule: timesteps the sampler visits: uniform, or the paper's early / latter (exponential) schedules
        steps: sampling steps (DDPM on the model's noise schedule)
        lam: lambda of the early / latter schedules (paper: 60)
        target: steer: the value to steer to (default: the concept's second value)
        source: steer: the value steered from; conditional models are captioned with it (default: the concept's first value)
        layer: steer: the probe's layer (default: its best cell in the probe results)
        t: steer: the probe's timestep, in the probe set's grid (default: its best cell)
        alphas: steer: shift lengths, in spreads of the probe set's features along the direction
        windows: steer: [start, end) timestep windows the shift is applied in (default: 5 equal windows over [0, T))
        probes: steer: the folder of 'probe.py linear' results (default: <run>/probes)
        reader: a concept_reader.pt to judge images with (default: <out>/concept_reader.pt, trained there when missing)
        reader_steps: training steps of a new concept reader
        reader_images: training images of a new concept reader (ConceptShapes renders them; other data: up to this many)
        data: images and concepts for the reader and the captions: 'shapes' (ConceptShapes) or a Hugging Face data set / local path
        overwrite: measure again what intervene.csv already holds
        batch_size: images per UNet call (doubled under classifier-free guidance)
        seed: image i uses seed + i
    """
    from diffprobe.commands import intervene_inputs as inputs
    from diffprobe.commands import intervene_plans as planning
    from diffprobe.commands.concept_data import load_data
    from diffprobe.commands.writing import guarded_output

    # 1. Every input is checked, in the order the flags are read, before --out is made, a reader
    #    trained or anything sampled.
    _check_flags(
        mode, reader=reader, probes=probes, steering=(target, source, layer, t, windows), switching=(pairs, switch_times), alphas=alphas
    )
    found = resolve(ckpt)
    call = inputs.Call(
        found, _output_folder(found, out), found.logdir(logdir), mode, weights, resolve_device(device), dtype, guidance, seed, batch_size,
        overwrite,
    )  # fmt: skip
    model = call.first_model()
    with flag("--data"):
        options = {"image_column": image_column, "concept_columns": list(concept_columns), "heldout_fraction": heldout_fraction}
        concept_data = load_data(found, model, data, options, num_captions, reader_images)
    chosen = inputs.choose_concepts(as_list(concepts), concept_data)
    timesteps = planning.sampler_timesteps(model, schedule, steps, lam)
    probes_folder = Path(probes) if probes else (found.run_dir / "probes" if found.run_dir else None)
    # 2. What each concept gets, and the settings that rows already in --out must share.
    if mode == "switch":
        planned = planning.switch_plans(call, model, concept_data, chosen, bool(concepts), switch_times, pairs, timesteps, num_captions)
    else:
        steering = planning.SteeringFlags(target, source, layer, t, alphas, windows)
        found_probes = inputs.load_probe_results(probes_folder, call)
        planned = planning.steer_plans(call, model, concept_data, chosen, found_probes, steering, timesteps, num_captions)
    settings = {
        "schedule": schedule, "steps": int(steps), "lam": float(lam) if schedule != "uniform" else None, **planned.settings, "data": data or "shapes",
        "reader": str(Path(reader).resolve()) if reader else "concept_reader.pt in --out", "seed": seed, "guidance": guidance,
        "source": str((found.run_dir or found.path).resolve()),
    }  # fmt: skip
    # 3. The reader, then each checkpoint in step order.
    given_reader = Path(reader) if reader else None
    with guarded_output(call.folder, "intervene"):
        return planning.measure_and_write(
            call, model, concept_data, planned, planning.checked_settings(call, settings), given_reader, reader_steps, probes_folder
        )


def _check_flags(mode: str, *, reader: str | None, probes: str | None, steering: tuple, switching: tuple, alphas: tuple) -> None:
    """What the flags alone say is wrong: files that are not there, settings of the other mode."""
    if reader and not Path(reader).is_file():
        raise CommandError(f"--reader {reader} is not a file; give a concept_reader.pt an earlier probe.py intervene wrote")
    if probes and not Path(probes).is_dir():
        raise CommandError(f"--probes {probes} is not a folder; give the folder probe.py linear wrote (with probes.csv)")
    if mode == "switch" and any(v is not None for v in steering):
        raise CommandError("--target, --source, --layer, --t and --windows are steering settings; add --mode steer")
    if mode == "steer" and any(switching):
        raise CommandError("--pairs and --switch_times are prompt-switch settings; use --mode switch")
    if mode == "steer" and not alphas:
        raise CommandError("--alphas is empty; give the shift lengths to try, e.g. '[0, 2, 4, 8]'")


def _output_folder(found: Source, out: str | None) -> Path:
    """``--out``, or ``<run>/intervene``: new, or one an earlier call wrote (later calls extend it)."""
    folder = found.output_folder(out, "intervene", "intervene")
    ours = (folder / "intervene.json").is_file() or (folder / "concept_reader.pt").is_file()
    if folder.is_dir() and any(folder.iterdir()) and not ours:
        raise CommandError(
            f"--out {folder} holds files probe.py intervene did not write; give a new folder (diffprobe does not write among other files)"
        )
    return folder
