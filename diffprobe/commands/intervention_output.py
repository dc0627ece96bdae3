"""Where ``probe.py intervene``'s measurements go: the table, example images, figures, TensorBoard
and the terminal summary (see ``commands/intervene.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from diffprobe.report import tb

EXAMPLES = 4  # images per example grid row set


def log(message: str) -> None:
    print(f"probe.py intervene: {message}", file=sys.stderr)


class InterventionOutput:
    def __init__(self, run):
        from diffprobe.intervene import results

        self.run, self.folder = run, run.folder
        self.rows = results.read_rows(self.folder)
        self.summary = results.read_summary(self.folder)
        if run.overwrite and run.settings_changed:  # new settings: what the old ones measured goes
            self.rows = [r for r in self.rows if r["mode"] != run.mode]
            self.summary["measured"] = [u for u in self.summary.get("measured", []) if u[2] != run.mode]
            self.summary.pop("lock_in" if run.mode == "switch" else "steer", None)
        self.summary.setdefault("settings", {})[run.mode] = run.settings
        if run.reader is not None:
            self.summary["reader"] = {
                "path": str(run.reader_path), "data": run.data_name, "accuracy": run.reader.accuracy, "n_heldout": run.reader.n_heldout,
            }  # fmt: skip
        self.done = {tuple(u) for u in self.summary.get("measured", [])}
        self._writer = None
        self.measured: set[int] = set()  # steps measured in this call (TensorBoard gets only those)

    @property
    def writer(self):
        if self._writer is None and self.run.logdir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run.logdir))  # a new events file beside the run's own
        return self._writer

    def todo(self, entry) -> list[str]:
        """The concepts still to measure on these weights (none for a copy of a measured step,
        such as last.ckpt)."""
        run, todo = self.run, []
        for concept in run.chosen:
            if (entry.name, run.weights, run.mode, concept, entry.step) in self.done and not run.overwrite:
                continue
            same_step = {u[0] for u in self.done if tuple(u[1:]) == (run.weights, run.mode, concept, entry.step) and u[0] != entry.name}
            if same_step and not run.overwrite:  # e.g. last.ckpt, a copy of the newest step=N.ckpt
                log(f"{entry.name}: {concept} skipped: step {entry.step} is already measured as {sorted(same_step)[0]}")
                continue
            todo.append(concept)
        return todo

    def _mark(self, entry, concept: str) -> None:
        unit = (entry.name, self.run.weights, self.run.mode, concept, entry.step)
        self.done.add(unit)
        self.summary["measured"] = sorted({tuple(u) for u in self.summary.get("measured", [])} | {unit})
        self.rows = [r for r in self.rows if (r["checkpoint"], r["weights"], r["mode"], r["concept"], r["step"]) != unit] + self._new
        self.measured.add(entry.step)

    def _title(self, entry) -> str:
        return f"{entry.name}, step {entry.step}, {self.run.weights} weights"

    # ---- switch --------------------------------------------------------------------------------

    def switch(self, entry, concept: str, images: torch.Tensor) -> None:
        """images (G, N, C, H, W): the finals switched at each switch time."""
        from diffprobe.intervene import figures
        from diffprobe.intervene.switch import insertion_curve

        run, group = self.run, self.run.groups[concept]
        self._examples(entry, concept, images, group)
        self._new = []
        if run.reader is None or group.second_labels is None:
            self._mark(entry, concept)
            return
        readings = [run.reader.reader.read(images[g]) for g in range(images.shape[0])]
        curve = insertion_curve(group, readings, run.switch_times, list(run.concepts))
        low, high = curve.interval
        for j, t_s in enumerate(curve.switch_times):
            self._new.append(self._row(entry, concept, "switch", curve.successes[j], curve.n, low[j], high[j], curve.others_kept[j], t_switch=t_s))
        lock = curve.lock_in()  # intervene.json's lock_in is made from the rows, in finish()
        self._mark(entry, concept)
        if self.writer is not None:
            figure = figures.insertion_curves([curve], run.T, f"prompt-switch insertion\n(step {entry.step}, {run.weights} weights)")
            self.writer.add_figure(tb.intervene_tag(concept, "cis"), figure, entry.step)
            self.writer.add_scalar(tb.intervene_tag(concept, "t_lock"), -1 if lock.t_lock is None else lock.t_lock, entry.step)

    def _examples(self, entry, concept: str, images: torch.Tensor, group) -> None:
        """The first captions' finals at every switch time, from switched-at-the-start (B) on the
        left to never switched (A) on the right."""
        from diffprobe.report import viz

        run = self.run
        count = min(EXAMPLES if run.reader is not None else 8, images.shape[1])
        if group.second_labels is not None:
            k = list(run.concepts).index(concept)
            values = run.concepts[concept]
            labels = [f"{i}: {values[group.first_labels[i, k]]} -> {values[group.second_labels[i, k]]}" for i in range(count)]
        else:
            labels = [f"{i}: {group.first[i][:28]} -> {group.second[i][:28]}" for i in range(count)]
        order = list(range(images.shape[0]))[::-1]
        rows = {label: images[order, i] for i, label in enumerate(labels)}
        columns = [f"{run.switch_times[g]}" for g in order]
        figure = viz.image_rows(rows, columns, f"{concept}: caption A, switched to B at t_s (columns; {self._title(entry)})")
        path = self.folder / "examples" / f"step{entry.step:06d}_{run.weights}_switch_{concept}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
        if run.reader is None:
            torch.save({"images": images, "switch_times": run.switch_times, "first": group.first, "second": group.second},
                       path.with_suffix(".pt"))  # fmt: skip

    # ---- steer ---------------------------------------------------------------------------------

    def steer(self, entry, concept: str, direction, settings, plain: torch.Tensor, steered: torch.Tensor) -> None:
        from diffprobe.intervene import figures
        from diffprobe.probes.stats import wilson_interval

        run = self.run
        names = list(run.concepts)
        k, target = names.index(concept), run.concepts[concept].index(direction.target)
        others = [j for j in range(len(names)) if j != k]
        base = run.reader.reader.read(plain)
        self._new = []
        for setting, images in zip(settings, steered):
            read = base if setting.alpha == 0 else run.reader.reader.read(images)
            successes, n = int((read[:, k] == target).sum()), read.shape[0]
            low, high = wilson_interval(torch.tensor([successes]), n)
            kept = float((read[:, others] == base[:, others]).float().mean()) if others else float("nan")
            self._new.append(self._row(entry, concept, setting.direction, successes, n, float(low[0]), float(high[0]), kept,
                                       alpha=setting.alpha, window_start=setting.window_start, window_end=setting.window_end))  # fmt: skip
        record = {
            "layer": direction.layer, "t": direction.t, "source": direction.source, "target": direction.target, "spread": direction.spread,
            "probe_accuracy": direction.probe_accuracy, "unsteered_target_rate": float((base[:, k] == target).float().mean()),
        }  # fmt: skip
        self.summary.setdefault("steer", {}).setdefault(run.weights, {}).setdefault(entry.name, {"step": entry.step, "concepts": {}})["concepts"][concept] = record
        self._mark(entry, concept)
        title = f"steering {concept} {direction.source} -> {direction.target} along the probe at {direction.layer}, t = {direction.t}\n({self._title(entry)})"
        figure = figures.steering_curves(self._new, title)
        path = self.folder / "steer" / f"step{entry.step:06d}_{run.weights}_{concept}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
        self._steer_examples(entry, concept, settings, plain, steered)
        if self.writer is not None:
            self.writer.add_figure(tb.intervene_tag(concept, "steer"), figure, entry.step)

    def _steer_examples(self, entry, concept, settings, plain, steered) -> None:
        """Unsteered images, then each alpha along the probe in the window that moved most, then
        the random direction at the largest alpha there."""
        from diffprobe.report import viz

        rates = {(r["variant"], r["alpha"], r["window_start"], r["window_end"]): r["rate"] for r in self._new}
        top = max(self.run.alphas)
        window = max(self.run.windows, key=lambda w: rates.get(("probe", top, *w), 0))
        rows = {"unsteered": plain[:8]}
        for index, setting in enumerate(settings):
            if setting.alpha != 0 and (setting.window_start, setting.window_end) == tuple(window):
                if setting.direction == "probe" or setting.alpha == top:
                    rows[f"{setting.direction} a={setting.alpha:g}"] = steered[index, :8]
        figure = viz.image_rows(rows, [str(i) for i in range(min(8, plain.shape[0]))], f"{concept}: steered during t in [{window[0]}, {window[1]}) ({self._title(entry)})")
        figure.savefig(self.folder / "steer" / f"step{entry.step:06d}_{self.run.weights}_{concept}_examples.png")

    def _row(self, entry, concept, variant, successes, n, low, high, kept, **where) -> dict:
        return {
            "step": entry.step, "checkpoint": entry.name, "weights": self.run.weights, "mode": self.run.mode, "concept": concept,
            "variant": variant, "t_switch": where.get("t_switch"), "alpha": where.get("alpha"), "window_start": where.get("window_start"),
            "window_end": where.get("window_end"), "n": n, "successes": successes, "rate": successes / n, "ci_low": low, "ci_high": high,
            "others_kept": kept,
        }  # fmt: skip

    def checkpoint_done(self, entry) -> None:
        from diffprobe.intervene import results

        results.write(self.folder, self.rows, self.summary)

    # ---- the whole table -----------------------------------------------------------------------

    def finish(self) -> Path:
        from diffprobe.intervene import results

        run = self.run
        if run.mode == "switch" and self.rows:
            self._switch_figures()
        results.write(self.folder, self.rows, self.summary)
        if self._writer is not None:
            self._writer.close()
        print(f"probe.py intervene: {len(self.rows)} rows (intervene.csv, intervene.json, figures, examples/) -> {self.folder}")
        return self.folder

    def _switch_figures(self) -> None:
        from diffprobe.intervene import figures
        from diffprobe.intervene.switch import InsertionCurve

        run = self.run
        mine = [r for r in self.rows if r["mode"] == "switch" and r["weights"] == run.weights]
        if not mine:
            return
        by_step: dict[int, dict[str, InsertionCurve]] = {}
        summary = self.summary.setdefault("lock_in", {})[run.weights] = {}
        for name, step, concept in dict.fromkeys((r["checkpoint"], r["step"], r["concept"]) for r in mine):
            rows = sorted((r for r in mine if (r["checkpoint"], r["step"], r["concept"]) == (name, step, concept)), key=lambda r: r["t_switch"])
            curve = InsertionCurve(concept, [r["t_switch"] for r in rows], [r["successes"] for r in rows], rows[0]["n"], [r["others_kept"] for r in rows])
            by_step.setdefault(step, {})[concept] = curve
            lock = curve.lock_in()
            summary.setdefault(name, {"step": step, "concepts": {}})["concepts"][concept] = {
                "t_lock": lock.t_lock, "low": lock.low, "high": lock.high, "inserted": lock.inserted,
                "cis_by_t_s": dict(zip(map(str, curve.switch_times), curve.rate)),
            }  # fmt: skip
        newest = max(by_step)
        order = list(run.concepts)
        curves = sorted(by_step[newest].values(), key=lambda c: order.index(c.concept) if c.concept in order else len(order))
        title = f"prompt-switch insertion, step {newest}, {run.weights} weights\n(band: 95% Wilson interval; red: t_lock and its range)"
        figures.insertion_curves(curves, run.T, title).savefig(self.folder / f"cis_{run.weights}.png")
        locks = {s: {c: v.lock_in().t_lock for c, v in curves_at.items()} for s, curves_at in by_step.items()}
        if len(by_step) > 1:
            figure = figures.lock_in_over_training(locks, list(by_step[newest]), f"lock-in time over training ({run.weights} weights)", run.T)
            figure.savefig(self.folder / f"t_lock_over_training_{run.weights}.png")
            if self.writer is not None and self.measured:
                self.writer.add_figure(tb.INTERVENE_T_LOCK_OVER_TRAINING, figure, max(self.measured))
        decodable = self._decodable(newest, [c.concept for c in curves])
        if decodable is not None:
            probe_step, max_t = decodable
            lock_ins = [c.lock_in() for c in curves]
            title = f"decodable (probe, step {probe_step}) vs decided (prompt switch, step {newest}); {run.weights} weights"
            figure = figures.decodable_vs_decided([c.concept for c in curves], max_t, lock_ins, run.T, title)
            figure.savefig(self.folder / f"decodable_vs_decided_{run.weights}.png")
            if self.writer is not None and newest in self.measured:
                self.writer.add_figure(tb.DECODABLE_VS_DECIDED, figure, newest)
            self.summary["decodable_vs_decided"] = {
                c.concept: {"decodable_up_to_t": t, "probe_step": probe_step, "t_lock": lock.t_lock, "t_lock_low": lock.low, "t_lock_high": lock.high}
                for c, t, lock in zip(curves, max_t, lock_ins)
            }  # fmt: skip
        _print_table(curves, decodable[1] if decodable else None, newest, run.reader.accuracy)

    def _decodable(self, step: int, concepts: list[str]):
        """(probe step, largest significantly decodable t per concept) from probe.py linear's table
        in the probes folder, at ``step`` or the nearest probed step; None without one."""
        from diffprobe.probes import results

        if self.run.probes is None:
            return None
        rows = [r for r in results.read_rows(self.run.probes) if r["weights"] == self.run.weights]
        if not rows:
            return None
        curves = results.step_curves(rows, self.run.weights, self.run.T)
        probe_step = min(curves.best, key=lambda s: (abs(s - step), -s))
        by_concept = dict(zip(curves.concepts, curves.max_decodable_t(probe_step)))
        return probe_step, [by_concept.get(c) for c in concepts]


def _print_table(curves, decodable: list[int | None] | None, step: int, accuracy: dict[str, float]) -> None:
    width = max(len("concept"), *(len(c.concept) for c in curves))
    print(f"\nstep {step}: when each concept is decided (prompt switch) and decodable (linear probe)")
    largest = f"CIS t_s={curves[0].switch_times[-1]}"
    print(f"{'concept':<{width}}  {'t_lock':>7}  {'95% range':>11}  {largest:>14}  {'decodable up to t':>17}  {'reader acc':>10}")
    for index, curve in enumerate(curves):
        lock = curve.lock_in()
        t_lock = "-" if lock.t_lock is None else f"{lock.t_lock:.0f}"
        span = "-" if lock.low is None or lock.high is None else f"{lock.low:.0f}-{lock.high:.0f}"
        if lock.t_lock is None:
            t_lock = "never" if not lock.inserted else "< grid"
        seen = "-" if decodable is None else ("none" if decodable[index] is None else str(decodable[index]))
        print(f"{curve.concept:<{width}}  {t_lock:>7}  {span:>11}  {curve.rate[-1]:>14.2f}  {seen:>17}  {accuracy.get(curve.concept, float('nan')):>10.3f}")
    print()
