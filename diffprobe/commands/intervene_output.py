"""Everything ``probe.py intervene`` writes (``commands/intervene.py`` decides what is measured):
the table (``intervene.csv`` / ``intervene.json``, through ``diffprobe.intervene.results``), the
figures and example images (atomically), TensorBoard (one lazily opened writer) and the terminal."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from diffprobe.commands.source import WeightsFile
from diffprobe.intervene import figures, results
from diffprobe.intervene.measure import SteerResult, SwitchResult
from diffprobe.intervene.plans import SteerPlan, SwitchPlan
from diffprobe.intervene.results import Decodable, Where
from diffprobe.intervene.switch import InsertionCurve
from diffprobe.io.atomic import save_figure, save_torch
from diffprobe.probes.results import read_rows
from diffprobe.report import tb, viz
from diffprobe.report.writer import LazyWriter

if TYPE_CHECKING:
    from diffprobe.commands.intervene_inputs import Call  # which imports log from here

SCORED_EXAMPLES = 4  # captions per example grid when a reader scores the images
UNSCORED_EXAMPLES = 8  # unscored, the images are all there is to look at
STEERED_EXAMPLES = 8  # images per row of a steering example grid


def log(message: str) -> None:
    print(f"probe.py intervene: {message}", file=sys.stderr)


class InterventionOutput:
    """The table a call extends, and the files and TensorBoard points of what it measures.

    ``settings``: this mode's settings, as intervene.json keeps them; ``replace``: they differ from
    the rows' already there (allowed by ``--overwrite``), so this mode's earlier results go."""

    def __init__(self, call: Call, *, concepts: Mapping[str, Sequence[str]], num_train_timesteps: int, settings: dict, replace: bool,
                 reader: dict | None) -> None:  # fmt: skip
        self.call, self.concepts, self.T = call, dict(concepts), num_train_timesteps
        self.folder = call.folder
        self.table = results.table(call.folder)
        self.rows, self.summary = self.table.read_rows(), self.table.read_summary()
        if replace:
            self.rows = [r for r in self.rows if r["mode"] != call.mode]
            self.summary["measured"] = [u for u in self.summary.get("measured", []) if u[2] != call.mode]
            self.summary.pop("lock_in" if call.mode == "switch" else "steer", None)
        self.summary.setdefault("settings", {})[call.mode] = settings
        if reader is not None:
            self.summary["reader"] = reader
        self.measured = results.measured_units(self.rows, self.summary)
        self.tensorboard = LazyWriter(call.logdir)  # a new events file beside the run's own, opened at the first point
        self.steps_measured: set[int] = set()  # TensorBoard gets points at these steps only: a rerun adds none

    def todo(self, entry: WeightsFile, concepts: Sequence[str]) -> list[str]:
        """The concepts still to measure on these weights (none for a copy of a measured step,
        such as last.ckpt, unless ``--overwrite``)."""
        todo = []
        for concept in concepts:
            found = self.measured.found_as(entry.name, entry.step, (self.call.weights, self.call.mode, concept))
            if found is None or self.call.overwrite:
                todo.append(concept)
            elif found != entry.name:
                log(f"{entry.name}: {concept} skipped: step {entry.step} is already measured as {found}")
        return todo

    def checkpoint_done(self) -> None:
        """The table as it stands: a killed call keeps every checkpoint it finished."""
        self.table.write(results.sorted_rows(self.rows), self.summary)

    def finish(self, probes: Path | None, reader_accuracy: Mapping[str, float]) -> Path:
        """The summaries over every row (switch: lock-in, figures, decodable vs decided, the
        terminal table), the table, and TensorBoard closed. ``probes``: probe.py linear's folder."""
        if self.call.mode == "switch":
            self._switch_summary(probes, reader_accuracy)
        self.checkpoint_done()
        self.tensorboard.close()
        print(f"probe.py intervene: {len(self.rows)} rows (intervene.csv, intervene.json, figures, examples/) -> {self.folder}")
        return self.folder

    # ---- one measured unit -----------------------------------------------------------------

    def _keep(self, entry: WeightsFile, concept: str, rows: list[dict]) -> None:
        """``rows`` replace what the table held for this unit; the unit counts as measured (also
        without rows: unscored images)."""
        what = (self.call.weights, self.call.mode, concept)
        self.measured.add(entry.name, entry.step, what)
        units = {tuple(u) for u in self.summary.get("measured", [])} | {(entry.name, *what, entry.step)}
        self.summary["measured"] = sorted(units)
        self.rows = [
            r for r in self.rows if (r["checkpoint"], r["step"], r["weights"], r["mode"], r["concept"]) != (entry.name, entry.step, *what)
        ]
        self.rows += rows
        self.steps_measured.add(entry.step)

    def _where(self, entry: WeightsFile) -> Where:
        return Where(entry.name, entry.step, self.call.weights)

    def _title(self, entry: WeightsFile) -> str:
        return f"{entry.name}, step {entry.step}, {self.call.weights} weights"

    def _png(self, figure, *parts: str) -> Path:
        return save_figure(figure, self.folder.joinpath(*parts))

    def switch(self, entry: WeightsFile, plan: SwitchPlan, result: SwitchResult) -> None:
        self._switch_examples(entry, plan, result)
        curve = result.curve
        self._keep(entry, plan.concept, [] if curve is None else results.switch_rows(self._where(entry), curve))
        if curve is None or not self.tensorboard.active:
            return
        title = f"prompt-switch insertion\n(step {entry.step}, {self.call.weights} weights)"
        self.tensorboard.figure(tb.intervene_tag(plan.concept, "cis"), figures.insertion_curves([curve], self.T, title), entry.step)
        t_lock = curve.lock_in().t_lock
        self.tensorboard.scalars({tb.intervene_tag(plan.concept, "t_lock"): -1 if t_lock is None else t_lock}, entry.step)

    def _switch_examples(self, entry: WeightsFile, plan: SwitchPlan, result: SwitchResult) -> None:
        """The first captions' finals at every switch time, from switched at the start (B) on the
        left to never switched (A) on the right; unscored, the images themselves as .pt too."""
        images, pairs = result.images, plan.pairs
        count = min(SCORED_EXAMPLES if result.curve is not None else UNSCORED_EXAMPLES, images.shape[1])
        if plan.scored:
            first, second = pairs.first_labels, pairs.second_labels
            if first is None or second is None:
                raise ValueError(f"the scored {plan.concept!r} caption pairs carry no value labels")
            k, values = list(self.concepts).index(plan.concept), self.concepts[plan.concept]
            labels = [f"{i}: {values[int(first[i, k])]} -> {values[int(second[i, k])]}" for i in range(count)]
        else:
            labels = [f"{i}: {pairs.first[i][:28]} -> {pairs.second[i][:28]}" for i in range(count)]
        order = list(range(images.shape[0]))[::-1]
        rows = {label: images[order, i] for i, label in enumerate(labels)}
        title = f"{plan.concept}: caption A, switched to B at t_s (columns; {self._title(entry)})"
        figure = viz.image_rows(rows, [str(plan.switch_times[g]) for g in order], title)
        path = self._png(figure, "examples", f"step{entry.step:06d}_{self.call.weights}_switch_{plan.concept}.png")
        if result.curve is None:
            saved = {"images": images, "switch_times": list(plan.switch_times), "first": list(pairs.first), "second": list(pairs.second)}
            save_torch(path.with_suffix(".pt"), saved)

    def steer(self, entry: WeightsFile, plan: SteerPlan, result: SteerResult) -> None:
        rows = results.steer_rows(self._where(entry), plan.concept, result.scores)
        steered = self.summary.setdefault("steer", {}).setdefault(self.call.weights, {})
        steered.setdefault(entry.name, {"step": entry.step, "concepts": {}})["concepts"][plan.concept] = result.record()
        self._keep(entry, plan.concept, rows)
        d = result.direction
        title = f"steering {plan.concept} {d.source} -> {d.target} along the probe at {d.layer}, t = {d.t}\n({self._title(entry)})"
        figure = figures.steering_curves(rows, title)
        self._png(figure, "steer", f"step{entry.step:06d}_{self.call.weights}_{plan.concept}.png")
        self._steer_examples(entry, plan, result)
        self.tensorboard.figure(tb.intervene_tag(plan.concept, "steer"), figure, entry.step)

    def _steer_examples(self, entry: WeightsFile, plan: SteerPlan, result: SteerResult) -> None:
        """Unsteered images, then each alpha along the probe in the window that moved most, then
        the random direction at the largest alpha there."""
        top = max(plan.alphas)
        rate = {(s.setting.direction, s.setting.alpha, s.setting.window_start, s.setting.window_end): s.rate for s in result.scores}
        window = max(plan.windows, key=lambda w: rate.get(("probe", top, *w), 0))
        rows = {"unsteered": result.plain[:STEERED_EXAMPLES]}
        for score, images in zip(result.scores, result.steered):
            setting = score.setting
            if (
                setting.alpha != 0
                and (setting.window_start, setting.window_end) == window
                and (setting.direction == "probe" or setting.alpha == top)
            ):
                rows[f"{setting.direction} a={setting.alpha:g}"] = images[:STEERED_EXAMPLES]
        columns = [str(i) for i in range(min(STEERED_EXAMPLES, result.plain.shape[0]))]
        figure = viz.image_rows(rows, columns, f"{plan.concept}: steered during t in [{window[0]}, {window[1]}) ({self._title(entry)})")
        self._png(figure, "steer", f"step{entry.step:06d}_{self.call.weights}_{plan.concept}_examples.png")

    # ---- the whole table (switch) ----------------------------------------------------------

    def _switch_summary(self, probes: Path | None, reader_accuracy: Mapping[str, float]) -> None:
        """Lock-in per checkpoint, the newest checkpoint's curves, lock-in over training and
        decodable vs decided, from every row of these weights (earlier calls' too)."""
        weights = self.call.weights
        measured = results.insertion_curves(self.rows, weights)
        if not measured:
            return
        self.summary.setdefault("lock_in", {})[weights] = results.lock_in_summary(measured)
        by_step: dict[int, dict[str, InsertionCurve]] = {}
        for at in measured:  # last.ckpt and step=N.ckpt are one step
            by_step.setdefault(at.step, {}).update(at.curves)
        newest = max(by_step)
        order = list(self.concepts)
        curves = sorted(by_step[newest].values(), key=lambda c: order.index(c.concept) if c.concept in order else len(order))
        title = f"prompt-switch insertion, step {newest}, {weights} weights\n(band: 95% Wilson interval; red: t_lock and its range)"
        self._png(figures.insertion_curves(curves, self.T, title), f"cis_{weights}.png")
        if len(by_step) > 1:
            self._lock_in_over_training(by_step, list(by_step[newest]))
        decodable = self._decodable_vs_decided(probes, newest, curves)
        print_lock_in_table(curves, decodable, newest, reader_accuracy)

    def _lock_in_over_training(self, by_step: dict[int, dict[str, InsertionCurve]], concepts: list[str]) -> None:
        weights = self.call.weights
        locks = {step: {c: curve.lock_in().t_lock for c, curve in curves.items()} for step, curves in by_step.items()}
        figure = figures.lock_in_over_training(locks, concepts, f"lock-in time over training ({weights} weights)", self.T)
        self._png(figure, f"t_lock_over_training_{weights}.png")
        if self.steps_measured:
            self.tensorboard.figure(tb.INTERVENE_T_LOCK_OVER_TRAINING, figure, max(self.steps_measured))

    def _decodable_vs_decided(self, probes: Path | None, newest: int, curves: list[InsertionCurve]) -> Decodable | None:
        """Where probe.py linear's results are at hand: when each concept is decodable (probe)
        next to when it is decided (prompt switch), as a figure and in intervene.json."""
        weights = self.call.weights
        decodable = (
            None if probes is None else results.decodable_at(read_rows(probes), weights, self.T, newest, [c.concept for c in curves])
        )
        if decodable is None:
            return None
        locks = [c.lock_in() for c in curves]
        title = f"learned and decodable (probe, step {decodable.probe_step}) vs decided (prompt switch, step {newest})\n{weights} weights"
        figure = figures.decodable_vs_decided([c.concept for c in curves], decodable.up_to_t, decodable.learned_up_to_t, locks, self.T, title)
        self._png(figure, f"decodable_vs_decided_{weights}.png")
        if newest in self.steps_measured:
            self.tensorboard.figure(tb.DECODABLE_VS_DECIDED, figure, newest)
        self.summary["decodable_vs_decided"] = {
            c.concept: {"decodable_up_to_t": t, "learned_up_to_t": learned, "probe_step": decodable.probe_step,
                        "t_lock": lock.t_lock, "t_lock_low": lock.low, "t_lock_high": lock.high}
            for c, t, learned, lock in zip(curves, decodable.up_to_t, decodable.learned_up_to_t, locks)
        }  # fmt: skip
        return decodable


def print_lock_in_table(curves: Sequence[InsertionCurve], decodable: Decodable | None, step: int, accuracy: Mapping[str, float]) -> None:
    """The terminal summary: per concept, when it is decided (t_lock and its range), CIS when switched
    at the largest t_s, how far up it is decodable, and the reader's accuracy on it."""
    width = max(len("concept"), *(len(c.concept) for c in curves))
    print(f"\nstep {step}: when each concept is decided (prompt switch), learned and decodable (linear probe)")
    largest = f"CIS t_s={curves[0].switch_times[-1]}"
    print(f"{'concept':<{width}}  {'t_lock':>7}  {'95% range':>11}  {largest:>14}  {'learned up to t':>15}  {'decodable up to t':>17}  {'reader acc':>10}")
    for index, curve in enumerate(curves):
        lock = curve.lock_in()
        if lock.t_lock is None:
            t_lock = "never" if not lock.inserted else "< grid"
        else:
            t_lock = f"{lock.t_lock:.0f}"
        span = "-" if lock.low is None or lock.high is None else f"{lock.low:.0f}-{lock.high:.0f}"
        seen, learned = ("-", "-") if decodable is None else (_t_text(decodable.up_to_t[index]), _t_text(decodable.learned_up_to_t[index]))
        print(
            f"{curve.concept:<{width}}  {t_lock:>7}  {span:>11}  {curve.rate[-1]:>14.2f}  {learned:>15}  {seen:>17}  {accuracy.get(curve.concept, float('nan')):>10.3f}"
        )
    print()


def _t_text(t: int | None) -> str:
    return "none" if t is None else str(t)
