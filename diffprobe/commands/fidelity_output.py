"""The work of ``probe.py fidelity`` once its inputs are checked (``commands/fidelity.py``): every
checkpoint still to measure is sampled and read, and the table, the figure, TensorBoard and the
terminal summary are written (each file atomically, the table after every checkpoint)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from diffprobe import interrupt
from diffprobe.commands.concept_data import ConceptData
from diffprobe.commands.fidelity import FidelityCall, log
from diffprobe.commands.source import WeightsFile, load_model
from diffprobe.data import dataset_size
from diffprobe.diffusion.model import DiffusionModel
from diffprobe.fidelity import measure, results
from diffprobe.fidelity.figures import fidelity_over_training
from diffprobe.fidelity.memorisation import memorised
from diffprobe.intervene.reader import TrainedReader
from diffprobe.io import atomic
from diffprobe.io.tables import Measured
from diffprobe.report import tb
from diffprobe.report.writer import LazyWriter


def _todo(call: FidelityCall, measured: Measured, entry: WeightsFile, concepts: list[str]) -> bool:
    if call.overwrite:
        return True
    names = {measured.found_as(entry.name, entry.step, (call.weights, c)) for c in concepts}
    if None not in names:
        other = sorted(name for name in names - {entry.name} if name is not None)
        if other:
            log(f"{entry.name} skipped: step {entry.step} is already measured as {other[0]}")
        return False
    return True


def _training_images(data: ConceptData, count: int) -> torch.Tensor:
    train = data.data_module().train_dataset()
    return torch.stack([train[i]["image"] for i in range(min(count, dataset_size(train)))])


def _measure(call: FidelityCall, model: DiffusionModel, plan: measure.SamplePlan, reader: TrainedReader, reference, train) -> tuple[list, float | None]:
    images = measure.sample(model, plan, call.batch_size)
    scores = measure.score(reader.reader, images, plan, reference)
    share = None if train is None else float(memorised(images, train).float().mean())
    return scores, share


def measure_and_write(call: FidelityCall, first: DiffusionModel, plan: measure.SamplePlan, reader: TrainedReader, data: ConceptData) -> Path:
    """Measure every checkpoint the table does not hold yet; write as each one finishes."""
    call.folder.mkdir(parents=True, exist_ok=True)
    table = results.table(call.folder)
    rows = table.read_rows()
    if call.overwrite:
        rows = [r for r in rows if r["weights"] != call.weights]
    summary = table.read_summary()
    summary.setdefault("settings", {})[call.weights] = asdict(call.settings)
    summary["reader"] = {"data": data.name, "accuracy": reader.accuracy, "n_heldout": reader.n_heldout}
    concepts = list(reader.reader.concepts)
    measured = Measured.of(rows, results.UNIT)
    reference = None if plan.labels is not None else measure.read(reader.reader, _heldout_images(data))[0]
    train = _training_images(data, call.settings.memorisation_images) if call.settings.memorisation_images else None
    tensorboard = LazyWriter(call.logdir)
    for index, entry in enumerate(call.source.files):
        interrupt.check()  # a stop between checkpoints ends here: the table holds whole checkpoints
        if not _todo(call, measured, entry, concepts):
            continue
        log(f"{entry.name} ({index + 1} of {len(call.source.files)})")
        model = first if index == 0 else load_model(entry, call.weights, call.device)
        scores, share = _measure(call, model, plan, reader, reference, train)
        new = results.score_rows(scores, step=entry.step, checkpoint=entry.name, weights=call.weights, memorised=share)
        rows = [r for r in rows if (r["checkpoint"], r["weights"]) != (entry.name, call.weights)] + new
        for r in new:
            measured.add(entry.name, entry.step, (r["weights"], r["concept"]))
        summary.setdefault("rendered_at_step", {})[call.weights] = results.rendered(rows, call.weights)
        table.write(sorted(rows, key=lambda r: (r["weights"], r["step"], r["checkpoint"])), summary)
        tensorboard.scalars({tb.fidelity_tag(s.concept, "ckpt"): s.value for s in scores}, entry.step)
        rendered = summary["rendered_at_step"][call.weights]
        tensorboard.scalars({tb.rendered_tag(c, "ckpt"): -1 if s is None else s for c, s in rendered.items()}, entry.step)
    mine = [r for r in rows if r["weights"] == call.weights]
    if mine:
        figure = fidelity_over_training(mine, call.weights, f"rendered: concept fidelity over training ({call.weights} weights, {len({r['step'] for r in mine})} checkpoints)")
        atomic.save_figure(figure, call.folder / f"fidelity_{call.weights}.png")
        tensorboard.figure(tb.fidelity_figure_tag("ckpt"), figure, max(r["step"] for r in mine))
        _print_summary(mine, summary["rendered_at_step"][call.weights])
    tensorboard.close()
    print(f"probe.py fidelity: {len(rows)} rows (fidelity.csv, fidelity.json, fidelity_{call.weights}.png) -> {call.folder}")
    return call.folder


def _heldout_images(data: ConceptData) -> torch.Tensor:
    heldout = data.data_module().heldout_dataset()
    return torch.stack([heldout[i]["image"] for i in range(dataset_size(heldout))])


def _print_summary(rows: list[dict], rendered: dict[str, int | None]) -> None:
    """Per concept: the newest checkpoint's number (with its interval) and when it was rendered."""
    newest = max(r["step"] for r in rows)
    last = {r["concept"]: r for r in rows if r["step"] == newest}
    metric = next(iter(last.values()))["metric"]
    width = max(len("concept"), *map(len, last))
    print(f"\nstep {newest}: {'fidelity (share of samples showing the caption value)' if metric == 'fidelity' else 'total variation to held-out data'}")
    print(f"{'concept':<{width}}  {metric:>9}  {'95% interval':>13}  {'rendered at step':>16}")
    for concept, r in last.items():
        interval = "-" if r["ci_low"] is None else f"{r['ci_low']:.2f}-{r['ci_high']:.2f}"
        step = rendered.get(concept)
        print(f"{concept:<{width}}  {r['value']:>9.3f}  {interval:>13}  {'not yet' if step is None else step:>16}")
    print()
