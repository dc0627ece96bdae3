"""``probe.py hidden``'s measuring loop and what it writes (the flags are read in ``hidden``)."""

from __future__ import annotations

import json
from pathlib import Path

from diffprobe import interrupt
from diffprobe.choices import Weights
from diffprobe.commands.common import CommandError, flag
from diffprobe.commands.hidden import StudyRun, log
from diffprobe.commands.source import WeightsFile, load_model
from diffprobe.io import atomic
from diffprobe.report import tb
from diffprobe.report.writer import LazyWriter

RESULTS = "results.json"
FIGURES = ("hidden_capability.png", "concept_space.png", "learning_speed.png", "represented_and_decided.png")


def _record_path(folder: Path, run: StudyRun) -> Path:
    return folder / "runs" / f"{run.name}.json"


def _earlier(folder: Path, run: StudyRun, settings: dict, weights: Weights) -> list[dict]:
    """The run's records an earlier call wrote (same settings, weights and design), else a CommandError."""
    path = _record_path(folder, run)
    if not path.is_file():
        return []
    with flag(f"--out {folder}"):
        stored = json.loads(path.read_text())
    as_stored = json.loads(json.dumps(settings))  # tuples come back as lists
    if stored.get("settings") != as_stored or stored.get("design") != run.design or stored.get("weights", "ema") != weights:
        raise CommandError(f"{path} was measured with other settings, weights or run design; give a new --out (diffprobe does not overwrite results)")
    return list(stored.get("records", []))


def _checkpoints(run: StudyRun) -> list[WeightsFile]:
    """One checkpoint per step (a step-named file before last.ckpt)."""
    by_step: dict[int, WeightsFile] = {}
    for entry in run.source.files:
        if entry.step not in by_step or by_step[entry.step].name == "last.ckpt":
            by_step[entry.step] = entry
    return [by_step[s] for s in sorted(by_step)]


def _reader(run: StudyRun, reader: tuple[int, int], seed: int, device: str):
    from diffprobe.fidelity.readers import cached_reader
    from diffprobe.training.datamodules import ConceptShapesDataModule

    design = run.design
    module = ConceptShapesDataModule(
        image_size=design["image_size"], train_size=64, heldout_size=1000, seed=design["seed"], colour_contrast=design["colour_contrast"],
        size_difference=design["size_difference"],
    )  # fmt: skip
    trained = cached_reader(module.reader_data(reader[1]), steps=reader[0], seed=seed, device=device, log=log)
    log(f"{run.name}: reader accuracy on clean held-out images: " + ", ".join(f"{k} {v:.3f}" for k, v in trained.accuracy.items()))
    return trained.reader.to(device)


def _design(run: StudyRun):
    from diffprobe.data.shapes import ShapesDesign

    design = run.design
    return ShapesDesign(tuple(tuple(c) for c in design["heldout_combinations"]), design["colour_contrast"], design["size_difference"])


def example_step(summary: dict) -> int:
    """The checkpoint the examples show: where the hidden window opens, else where plain prompting
    first makes the combination, else the last."""
    window = summary["hidden_window"]
    if window["hidden"]:
        return window["opens"]
    return summary["reaches_80"].get("plain") or summary["steps"][-1]["step"]


def _check_model(model, settings) -> None:
    from diffprobe.capture.layers import find_layers

    if not model.conditional:
        raise CommandError("--ckpt: the study prompts a held-out combination; this model takes no captions (train with --model.conditional true)")
    T = model.num_train_timesteps
    if settings.sampling_steps > T or max(settings.timesteps + settings.switch_times) >= T:
        raise CommandError(f"--steps, --timesteps and --switch_times must lie below the model's T = {T}")
    with flag("--layers"):
        find_layers(model.unet, list(settings.layers))


def _measure_run(run: StudyRun, settings, folder: Path, *, weights: Weights, device: str, batch_size: int, reader: tuple[int, int]) -> list[dict]:
    from diffprobe.hidden.prompts import heldout_prompts
    from diffprobe.hidden.study import baselines, measure_checkpoint

    records = _earlier(folder, run, settings.record(), weights)
    done = {r["step"] for r in records}
    todo = [e for e in _checkpoints(run) if e.step not in done]
    if not todo:
        return records
    init = load_model(_checkpoints(run)[0], weights, device)
    _check_model(init, settings)
    combination = run.design["heldout_combinations"][0]
    with flag("heldout_combinations of the run"):
        prompts = heldout_prompts(combination, settings.num_images, settings.seed)
        design = _design(run)
    judge = _reader(run, reader, settings.seed, device)
    base = baselines(init, design, prompts, settings)
    tensorboard = LazyWriter(run.source.run_dir)
    for entry in todo:
        interrupt.check()  # a stop between checkpoints ends here: the record holds whole checkpoints
        log(f"{run.name}: {entry.name}")
        model = init if entry.step == 0 else load_model(entry, weights, device)
        record = measure_checkpoint(model, judge, prompts, base, settings, batch_size)
        record["step"] = entry.step
        records = sorted([*records, record], key=lambda r: r["step"])
        atomic.write_json(_record_path(folder, run), {"settings": settings.record(), "weights": weights, "design": run.design, "records": records})
        tensorboard.scalars({f"{tb.HIDDEN}/{name}": score["combination"] for name, score in record["variants"].items()}, entry.step)
    tensorboard.close()
    return records


def measure_and_write(runs: list[StudyRun], settings, folder: Path, *, weights: Weights, device: str, batch_size: int, reader: tuple[int, int]) -> Path:
    """Measure what each run's record lacks, then write results.json and the figures."""
    from diffprobe.hidden import figures
    from diffprobe.hidden.prompts import heldout_prompts
    from diffprobe.hidden.study import examples
    from diffprobe.hidden.summary import summarise_run

    for run in runs:  # every run's earlier settings are checked before anything is measured
        _earlier(folder, run, settings.record(), weights)
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    summaries = []
    for run in runs:
        records = _measure_run(run, settings, folder, weights=weights, device=device, batch_size=batch_size, reader=reader)
        summaries.append(summarise_run(run.name, run.design, records))
    atomic.write_json(folder / RESULTS, {"settings": settings.record(), "weights": weights, "runs": summaries})
    concepts = [*summaries[0]["heldout_combination"], "combination"]
    made = [
        figures.hidden_capability(summaries), figures.concept_space(summaries), figures.speed_against_signal(summaries, concepts),
        figures.represented_and_decided(summaries),
    ]  # fmt: skip
    for figure, name in zip(made, FIGURES):
        atomic.save_figure(figure, folder / name)
    for run, summary in zip(runs, summaries):
        step = example_step(summary)
        model = load_model(next(e for e in _checkpoints(run) if e.step == step), weights, device)
        shown = examples(model, _design(run), heldout_prompts(run.design["heldout_combinations"][0], settings.num_images, settings.seed), settings)
        atomic.save_figure(figures.variant_examples(shown, summary, step), folder / f"examples_{run.name}.png")
    _print_summary(summaries)
    print(f"probe.py hidden: {len(summaries)} runs ({RESULTS}, {', '.join(FIGURES)}) -> {folder}")
    return folder


def _print_summary(summaries: list[dict]) -> None:
    for run in summaries:
        window = run["hidden_window"]
        reach = ", ".join(f"{v} {s if s is not None else 'never'}" for v, s in run["reaches_80"].items())
        hidden = f"hidden from {window['opens']} ({window['first_intervention']}) to {window['closes'] or 'beyond the last step'}" if window["hidden"] else "no hidden window"
        print(f"{run['run']}: first step at 80%: {reach}; {hidden}")
