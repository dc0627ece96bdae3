"""``probe.py intervene``'s plans (``commands/intervene.py`` holds its flags): each concept's
frozen plan built from the checked flags (every bad value refused in its flag's words before a
reader is trained or anything is sampled), the settings rows already in ``--out`` must share, and
the plans carried out over the checkpoints of ``--ckpt``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

from diffusers import DDPMScheduler

from diffprobe import interrupt
from diffprobe.choices import Method, Pool, SamplingSchedule
from diffprobe.commands.common import CommandError, flag
from diffprobe.commands.concept_data import ConceptData
from diffprobe.commands.intervene_inputs import Call, ProbeResults, prepare_reader
from diffprobe.commands.intervene_output import InterventionOutput, log
from diffprobe.data.probe_set import ProbeSet
from diffprobe.diffusion.timesteps import default_timesteps, schedule_timesteps
from diffprobe.intervene import plans
from diffprobe.intervene.measure import measure_steer, measure_switch
from diffprobe.intervene.plans import ProbeCell, SteerPlan, SwitchPlan, choose_cell
from diffprobe.intervene.reader import ConceptReader
from diffprobe.intervene.results import SettingsCheck, compare_settings, table
from diffprobe.intervene.switch import encode_captions
from diffprobe.io.runs import INITIAL_CHECKPOINT


def num_train_timesteps(model) -> int:
    """T: the model's training timesteps (t runs over [0, T))."""
    return int(model.scheduler_config["num_train_timesteps"])


def sampler_timesteps(model, schedule: SamplingSchedule, steps: int, lam: float) -> tuple[int, ...]:
    """The timesteps the sampler visits (descending), on the model's noise schedule."""
    with flag("--schedule"):
        return tuple(schedule_timesteps(schedule, DDPMScheduler.from_config(model.scheduler_config), steps, lam))


@dataclass(frozen=True)
class Planned:
    """Each concept's plan, the settings intervene.json keeps of them, and (steer) the probe set."""

    plans: Mapping[str, SwitchPlan | SteerPlan]
    settings: dict
    probe_set: ProbeSet | None = None


def switch_plans(
    call: Call, model, data: ConceptData, chosen: list[str], concepts_given: bool, switch_times, pairs, timesteps, count: int
) -> Planned:
    """Caption pairs per concept (given, or made from held-out labels), checked against the model's
    vocabulary, and the switch times."""
    T = num_train_timesteps(model)
    with flag("--switch_times"):
        times = plans.switch_times(switch_times, T, default_timesteps(T))
    if pairs:
        if concepts_given and data.concepts and set(chosen) != set(data.concepts):
            raise CommandError("--concepts and --pairs: the pairs say which concept each one switches; leave out --concepts")
        with flag("--pairs"):
            groups = plans.given_pairs(pairs, data.concept_shapes)
    else:
        if data.module is None:
            raise CommandError(
                f"{call.source.path} has no data set to make caption pairs from; give --pairs '[[caption A, caption B], ...]'"
            )
        captioner = plans.label_captioner(data.concepts, data.concept_shapes)
        with flag("--concepts"):
            groups = plans.generated_pairs(data.heldout_labels(count), data.concepts, captioner, chosen, call.seed)
    for concept, group in groups.items():  # unknown words fail here, before any sampling
        with flag("--pairs" if pairs else f"captions of {concept}"):
            encode_captions(model, [*group.first, *group.second])
    settings = {"switch_times": list(times), "n": len(pairs) if pairs else int(count), "pairs": [list(p) for p in pairs] if pairs else None}
    return Planned({c: plans.SwitchPlan(g, times, tuple(timesteps)) for c, g in groups.items()}, settings)


@dataclass(frozen=True)
class SteeringFlags:
    """The steering flags as given (None: chosen per concept)."""

    target: str | None
    source: str | None
    layer: str | None
    t: int | None
    alphas: tuple[float, ...]
    windows: list | None


def steer_plans(
    call: Call, model, data: ConceptData, chosen: list[str], found: ProbeResults, flags: SteeringFlags, timesteps, count: int
) -> Planned:
    """Per concept: the probe cell (as an earlier call into --out chose it, unless --layer / --t say),
    the two values and, for a conditional model, captions showing the source value."""
    if (flags.target is not None or flags.source is not None) and len(chosen) != 1:
        raise CommandError(f"--target / --source name values of one concept; give one --concepts (of {list(data.concepts)})")
    earlier = (table(call.folder).read_summary().get("settings", {}).get("steer") or {}).get("probes", {})
    chosen_values: dict[str, tuple[ProbeCell, str, str]] = {}
    for concept in chosen:  # the flags in their order: --target, --source, --layer, --t, then --alphas, --windows
        cell = probe_cell(found, concept, flags, earlier.get(concept))
        with flag("--source / --target"):
            chosen_values[concept] = (cell, *plans.steering_values(data.concepts[concept], concept, flags.source, flags.target))
    with flag("--alphas"):
        alphas = plans.shift_lengths(flags.alphas)
    with flag("--windows"):
        windows = plans.steering_windows(flags.windows, num_train_timesteps(model), timesteps)
    labels = data.heldout_labels(count) if model.conditional else None
    captioner = plans.label_captioner(data.concepts, data.concept_shapes)
    steer: dict[str, SteerPlan] = {}
    for concept, (cell, source, target) in chosen_values.items():
        captions = None if labels is None else plans.source_captions(labels, data.concepts, concept, source, captioner)
        steer[concept] = plans.SteerPlan(concept, cell, source, target, captions, alphas, windows, tuple(timesteps), int(count))
    settings = {
        "alphas": list(alphas),
        "windows": [list(w) for w in windows],
        "n": int(count),
        "probes": {c: p.record() for c, p in steer.items()},
    }
    return Planned(steer, settings, found.probe_set)


def probe_cell(found: ProbeResults, concept: str, flags: SteeringFlags, earlier: dict | None) -> ProbeCell:
    """The probe cell ``concept`` is steered with, refused where --layer / --t name none."""
    mine = [r for r in found.rows if r["concept"] == concept]
    if not mine or concept not in found.probe_set.concept_names:
        raise CommandError(f"no probe results for {concept!r} in {found.folder} (or its probe set); {found.hint}")
    layers, grid = sorted({r["layer"] for r in mine}), sorted({r["t"] for r in mine})
    if flags.layer is not None and flags.layer not in layers:
        raise CommandError(f"--layer {flags.layer}: no probe results at it; probed layers: {layers}")
    if flags.t is not None and flags.t not in grid:
        raise CommandError(f"--t {flags.t}: not in the probe set's grid {grid}")
    cell = choose_cell(mine, layer=flags.layer, t=flags.t, earlier=ProbeCell(earlier["layer"], earlier["t"]) if earlier else None)
    if cell is None:
        newest = max(r["step"] for r in mine)
        raise CommandError(f"no probe result for {concept!r} at --layer {flags.layer} --t {flags.t} at step {newest}; {found.hint}")
    fits = sorted({(r.get("pool") or "mean", r.get("method") or "logistic") for r in mine})
    if len(fits) > 1:
        raise CommandError(f"{found.folder} holds probes of {concept!r} fitted in several ways ({fits}); steer from a folder of one probe.py linear setting")
    # Steering refits the probe exactly as linear fitted it (its rows hold linear's --pool and --method).
    cell = replace(cell, pool=cast(Pool, fits[0][0]), method=cast(Method, fits[0][1]))
    if cell.t not in found.probe_set.timesteps.tolist():
        raise CommandError(
            f"the probe set {found.probe_set_path} has no t = {cell.t} (its grid: {found.probe_set.timesteps.tolist()}); {found.hint}"
        )
    return cell


def checked_settings(call: Call, settings: dict) -> SettingsCheck:
    """Rows already in --out were measured with the same settings and model, or --overwrite
    replaces them (``changed``: which differ)."""
    earlier = table(call.folder).read_summary().get("settings", {}).get(call.mode)
    check = compare_settings(earlier, settings)
    if check.changed and not call.overwrite:
        raise CommandError(
            f"{call.folder} holds --mode {call.mode} results made with other settings ({', '.join(check.changed)}); "
            "give a new --out, or --overwrite true to replace them"
        )
    return check


def measure_and_write(
    call: Call,
    model,
    data: ConceptData,
    planned: Planned,
    settings: SettingsCheck,
    reader: Path | None,
    reader_steps: int,
    probes: Path | None,
) -> Path:
    """The reader (loaded or trained), then every checkpoint still to measure, then the summaries."""
    judge = prepare_reader(reader, call, data, reader_steps)
    output = InterventionOutput(
        call, concepts=data.concepts, num_train_timesteps=num_train_timesteps(model), settings=settings.settings,
        replace=bool(settings.changed), reader=None if judge is None else judge.summary(data.name),
    )  # fmt: skip
    _measure_checkpoints(call, model, planned, None if judge is None else judge.trained.reader, data.concepts, output)
    return output.finish(probes, {} if judge is None else judge.trained.accuracy)


def _measure_checkpoints(
    call: Call, model, planned: Planned, reader: ConceptReader | None, concepts: dict, output: InterventionOutput
) -> None:
    """Each checkpoint of --ckpt in step order, each concept the table does not hold yet; the table
    is written after every checkpoint, so a stopped call keeps what it finished."""
    files = call.source.files
    for index, entry in enumerate(files):
        interrupt.check()  # a stop between checkpoints ends here: the table holds whole checkpoints
        if entry.name == INITIAL_CHECKPOINT and len(files) > 1:
            # A run's untrained weights decide nothing; sampling them would only cost time. Given
            # alone as --ckpt, they are measured like any checkpoint.
            log(f"{entry.name} (the run's weights before training) is not measured; give it as --ckpt to measure it")
            continue
        todo = output.todo(entry, list(planned.plans))
        if not todo:
            continue
        log(f"{entry.name} ({index + 1} of {len(files)}): {', '.join(todo)}")
        if index > 0:  # the first checkpoint's model is loaded already
            model = call.load(entry)
        for concept in todo:
            plan = planned.plans[concept]
            if isinstance(plan, SwitchPlan):
                output.switch(entry, plan, measure_switch(model, plan, reader, list(concepts), seed=call.seed, batch_size=call.batch_size))
            else:
                if planned.probe_set is None or reader is None:  # steer_plans gives its probe set; steering needs a data set, so a reader
                    raise CommandError("--mode steer needs the probe set and a concept reader")
                output.steer(
                    entry, plan, measure_steer(model, plan, planned.probe_set, reader, concepts, seed=call.seed, batch_size=call.batch_size)
                )
        output.checkpoint_done()
