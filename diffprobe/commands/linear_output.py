"""The work of ``probe.py linear`` once its plan is checked (``commands/linear.py``): each
checkpoint probed beside its baselines, and everything written (the table, heatmaps, figures,
TensorBoard, the terminal summary). Every file is written atomically."""

from __future__ import annotations

from pathlib import Path

from diffprobe import interrupt
from diffprobe.commands.linear import LinearPlan, log
from diffprobe.commands.source import WeightsFile, load_model
from diffprobe.data.probe_set import PROBE_SET_FILE, ProbeSet
from diffprobe.diffusion.model import DiffusionModel
from diffprobe.io import atomic
from diffprobe.io.tables import Measured
from diffprobe.probes import figures, results
from diffprobe.probes.baselines import Learned, compare
from diffprobe.probes.pipeline import probe_input, probe_unet
from diffprobe.probes.table import ProbeTable
from diffprobe.report import tb
from diffprobe.report.writer import LazyWriter


def probe_set_of(plan: LinearPlan) -> ProbeSet:
    """The plan's probe set (``commands/linear.py`` holds it as an ``object``: it loads no torch)."""
    if not isinstance(plan.probe_set, ProbeSet):
        raise TypeError(f"a linear plan holds a ProbeSet, not {type(plan.probe_set).__name__}")
    return plan.probe_set


class Baselines:
    """The input baseline (made once) and the init baseline (probed at the first need, or taken
    from the step-0 checkpoint's own table when that is probed first)."""

    def __init__(self, plan: LinearPlan, scheduler):
        self.plan = plan
        self.input = probe_input(scheduler, probe_set_of(plan), plan.pool, plan.method)
        self._init: ProbeTable | None = None

    def is_init(self, entry: WeightsFile) -> bool:
        return self.plan.init is not None and entry.path.resolve() == self.plan.init.path.resolve()

    def init(self) -> ProbeTable | None:
        if self.plan.init is not None and self._init is None:
            self._init = probe(self.plan, load_model(self.plan.init, self.plan.weights, self.plan.device))
        return self._init

    def compare(self, entry: WeightsFile, table: ProbeTable) -> Learned:
        if self.is_init(entry):
            self._init = table  # the init weights themselves: gain 0 by construction
        return compare(table, self.input, self.init())


def probe(plan: LinearPlan, model: DiffusionModel) -> ProbeTable:
    # A conditional UNet gets the empty caption: probes read the image, not the caption.
    return probe_unet(model.unet, model.scheduler, probe_set_of(plan), plan.layers, plan.pool, plan.method, plan.batch_size, model.empty_caption())


def _skip_reason(plan: LinearPlan, measured: Measured, entry: WeightsFile) -> str | None:
    """Why ``entry`` needs no probing (None: it does): all its cells are in the table already,
    under its own name or, at the same step, another's (last.ckpt repeats the newest step=N.ckpt)."""
    if plan.overwrite:
        return None
    probe_set = probe_set_of(plan)
    cells = [(plan.weights, layer, t, c) for layer in plan.layers for t in probe_set.timesteps.tolist() for c in probe_set.concept_names]
    names = {measured.found_as(entry.name, entry.step, cell) for cell in cells}
    if None in names:
        return None
    others = sorted(name for name in names - {entry.name} if name is not None)
    return f"step {entry.step} is already probed as {others[0]}" if others else "already probed"


def measure_and_write(plan: LinearPlan, loaded: object) -> Path:
    """Probe every checkpoint that is not in the table yet; write as each one finishes. ``loaded``:
    the first checkpoint's DiffusionModel when :func:`plan_linear` loaded it (else None)."""
    first = loaded if isinstance(loaded, DiffusionModel) else None
    plan.folder.mkdir(parents=True, exist_ok=True)
    if plan.probe_set_is_new:
        probe_set_of(plan).save(plan.folder / PROBE_SET_FILE)
    log(plan.init_note)
    table = results.table(plan.folder)
    rows = table.read_rows()
    measured = Measured.of(rows, results.CELL)
    tensorboard = LazyWriter(plan.logdir)
    baselines = None
    probed: list[int] = []
    for index, entry in enumerate(plan.source.files):
        interrupt.check()  # a stop between checkpoints ends here: every table holds whole checkpoints
        log(f"{entry.name} ({index + 1} of {len(plan.source.files)})")
        reason = _skip_reason(plan, measured, entry)
        if reason is not None:
            if reason != "already probed":
                log(f"{entry.name} skipped: {reason}")
            continue  # decided before loading it: a rerun after more training loads only the new checkpoints
        model = first if index == 0 and first is not None else load_model(entry, plan.weights, plan.device)
        first = None  # let the first model go once it is probed (or skipped)
        baselines = baselines or Baselines(plan, model.scheduler)
        learned = baselines.compare(entry, probe(plan, model))
        new_rows = learned.rows(step=entry.step, checkpoint=entry.name, weights=plan.weights)
        keys = {(r["checkpoint"], r["weights"], r["layer"], r["t"], r["concept"]) for r in new_rows}
        rows = [r for r in rows if (r["checkpoint"], r["weights"], r["layer"], r["t"], r["concept"]) not in keys] + new_rows
        table.write(rows, {"pool": plan.pool, "method": plan.method, "init": plan.init_note})
        for r in new_rows:
            measured.add(entry.name, entry.step, (r["weights"], r["layer"], r["t"], r["concept"]))
        _heatmaps(learned, plan.folder / "heatmaps", entry.step, plan.weights)
        prefix = tb.CKPT_PROBE_PREFIX[plan.weights]
        tensorboard.scalars({tb.probe_tag(prefix, r["concept"], r["layer"], r["t"]): r["accuracy"] for r in new_rows}, entry.step)
        probed.append(entry.step)
    mine = [r for r in rows if r["weights"] == plan.weights]
    if mine:
        _summaries(plan, mine, probed, tensorboard)
    tensorboard.close()
    print(f"probe.py linear: {len(rows)} probe results (probes.csv, emergence.json, heatmaps/, decodability_*.png) -> {plan.folder}")
    return plan.folder


def _summaries(plan: LinearPlan, rows: list[dict], probed: list[int], tensorboard: LazyWriter) -> None:
    """emergence.json, the figures and the terminal table from the whole table; TensorBoard gets
    the summary only at the steps this call measured (no duplicates)."""
    atomic.write_json(plan.folder / "emergence.json", results.emergence(rows))
    curves = results.step_curves(rows, plan.weights, plan.num_train_timesteps)
    made = _figures(curves, plan.folder, plan.weights)
    prefix = tb.CKPT_PROBE_PREFIX[plan.weights]
    for step in sorted(set(probed)):
        summaries: tuple[tuple[tb.SummaryName, list[int | None]], ...] = (
            ("decodable_t", curves.max_decodable_t(step)),
            ("learned_t", curves.max_learned_t(step)),
        )
        for name, values in summaries:
            tensorboard.scalars({tb.probe_summary_tag(prefix, c, name): -1 if t is None else t for c, t in zip(curves.concepts, values)}, step)
    if probed:
        for name, figure in made.items():
            tensorboard.figure(tb.probe_summary_figure_tag(prefix, name), figure, max(curves.best))
    _print_summary(curves, plan.weights)


def _print_summary(curves: results.StepCurves, weights: str) -> None:
    """Per concept: how far into the noise it is decodable and learned at the last step, and since when."""
    steps = sorted(curves.best)
    decodable, learned = curves.max_decodable_t(steps[-1]), curves.max_learned_t(steps[-1])
    first = [next((s for s in steps if curves.max_learned_t(s)[k] is not None), None) for k in range(len(curves.concepts))]
    width = max(len("concept"), *map(len, curves.concepts))
    print(f"\nstep {steps[-1]}, {weights} weights: largest t at which each concept is decodable (above chance) and learned (above both baselines)")
    print(f"{'concept':<{width}}  {'decodable up to t':>17}  {'learned up to t':>15}  {'first learned at step':>21}")
    for k, concept in enumerate(curves.concepts):
        shown = ["none" if v is None else str(v) for v in (decodable[k], learned[k])]
        print(f"{concept:<{width}}  {shown[0]:>17}  {shown[1]:>15}  {'never' if first[k] is None else first[k]:>21}")
    print()


def _figures(curves: results.StepCurves, out: Path, weights: str) -> dict:
    """``decodability_<weights>.png`` (the last step) and, over several checkpoints, the
    over-training figures; returns those by name (TensorBoard gets them too)."""
    step = max(curves.best)
    title = f"learned vs decodable by timestep ({weights} weights, step {step}; best layer at each t)"
    figure = figures.decodability_curves(curves.best[step], curves.decodable[step], curves.timesteps, curves.concepts, title, curves.baseline[step], curves.learned[step])
    atomic.save_figure(figure, out / f"decodability_{weights}.png")
    if len(curves.best) < 2:
        return {}
    note = f"{weights} weights, {len(curves.best)} checkpoints"
    made = {
        "decodability": figures.decodability_over_training(
            curves.best, curves.decodable, curves.timesteps, curves.concepts, f"learned (filled) and decodable by timestep over training ({note})",
            curves.baseline, curves.learned,
        ),  # fmt: skip
        "decodable_t": figures.largest_t_over_training(
            {s: curves.max_decodable_t(s) for s in curves.best}, curves.concepts, f"decodable: largest t above chance ({note})", curves.num_train_timesteps
        ),
        "learned_t": figures.largest_t_over_training(
            {s: curves.max_learned_t(s) for s in curves.best}, curves.concepts, f"learned: largest t above both baselines ({note})",
            curves.num_train_timesteps, ylabel="largest learned t",
        ),  # fmt: skip
    }
    for name, figure in made.items():
        atomic.save_figure(figure, out / f"{name}_{weights}_over_training.png")
    return made


def _heatmaps(learned: Learned, folder: Path, step: int, weights: str) -> None:
    for _, concept, figure in figures.probe_heatmaps(learned.table, f"{weights}, step {step}", by=("concept",)):
        atomic.save_figure(figure, folder / f"step{step:06d}_{weights}_{concept}.png")
    for concept, figure in figures.gain_heatmaps(learned, f"{weights}, step {step}"):
        atomic.save_figure(figure, folder / f"step{step:06d}_{weights}_{concept}_gain.png")

