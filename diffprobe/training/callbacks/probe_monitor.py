"""ProbeMonitor: every N steps, linear probes for every (layer, t, concept) on the fixed probe set,
each beside its baselines: the input (the same probe on x_t itself) and the init (this run's
step-0 weights, probed at the first evaluation).

Writes ``probe/<concept>/<layer>/t<tttt>/acc`` scalars (EMA weights; ``probe_raw/...`` for the raw
ones), heatmaps per concept (layer x t, accuracy and gain over the better baseline) and per layer
under ``probe_heatmap/``, and the summary a reader starts from, in TensorBoard's first group:
``Overview/learned_t/<concept>`` (the largest t at which some layer is significantly above both
baselines, -1 at none) beside ``Overview/decodable_t/<concept>`` (above chance), custom-scalars
charts of both, and figures over the evaluations so far (``Overview/learned_t_over_training``,
``Overview/decodable_t_over_training``, ``Overview/decodability_over_training``). The probe set is
saved as ``probe_set.pt`` in the run and reused when the run is resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from diffprobe.capture import check_layers, default_layers, eager
from diffprobe.choices import HeatmapView, Method, Pool, WeightsOrBoth
from diffprobe.data.probe_set import PROBE_SET_FILE, ProbeSet
from diffprobe.diffusion.timesteps import check_timesteps, default_timesteps
from diffprobe.probes import figures
from diffprobe.probes.baselines import Learned, compare
from diffprobe.probes.pipeline import probe_input, probe_unet
from diffprobe.probes.table import ProbeTable
from diffprobe.report import tb
from diffprobe.training.callbacks.periodic import PeriodicObserver


class ProbeMonitor(PeriodicObserver):
    """Args:
    every_n_steps: evaluate after every this many optimizer steps (and at the start and end).
    num_images: probe-set size (held-out images; 2/3 fit the probes, 1/3 score them).
    timesteps: the t grid; default 15 values over [0, T), dense at small t.
    layers: UNet module names; default each down block, the mid block, each up block.
    pool: ``mean`` (global average) or ``grid2`` / ``grid4`` (spatial cells).
    method: ``logistic`` (scikit-learn's objective, batched L-BFGS) or ``ridge`` (closed form).
    weights: probe the ``ema`` weights, the ``raw`` ones, or ``both``.
    batch_size: UNet batch for feature extraction.
    heatmaps: which heatmap figures to log: per ``"concept"`` (layer x t; the default), per
        ``"layer"`` (concept x t), both (``true``) or none (``false``). Each is a figure drawn on
        every evaluation: the per-layer ones double that cost for views the per-concept ones hold.
    probe_set: path of a saved probe set to use instead of building one.
    seed: seed of the probe set's noise, split and control labels.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_images: int = 300,
        timesteps: list[int] | None = None,
        layers: list[str] | None = None,
        pool: Pool = "mean",
        method: Method = "logistic",
        weights: WeightsOrBoth = "ema",
        batch_size: int = 128,
        heatmaps: bool | HeatmapView = "concept",
        probe_set: str | None = None,
        seed: int = 0,
    ):
        super().__init__(every_n_steps)
        if num_images < 10:
            raise ValueError(f"num_images must be >= 10 (probes need a train and a test part), got {num_images}")
        if weights not in ("ema", "raw", "both"):
            raise ValueError(f"weights must be 'ema', 'raw' or 'both', got {weights!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive number of UNet inputs, got {batch_size}")
        if probe_set is not None and not Path(probe_set).is_file():
            raise FileNotFoundError(f"probe set {probe_set} does not exist")
        self.num_images, self.timesteps = num_images, timesteps
        self.layers, self.pool, self.method, self.weights = layers, pool, method, weights
        self._layers_arg = list(layers) if layers else None  # as given: part of the state key
        self.batch_size, self.heatmaps, self.seed = batch_size, heatmaps, seed
        self.probe_set_path = str(probe_set) if probe_set is not None else None  # plain data in the checkpoint
        self.probe_set: ProbeSet | None = None
        self.history: list[dict[str, Any]] = []
        self.input_table: ProbeTable | None = None  # the input baseline, made at the first evaluation
        self.init_tables: dict[str, ProbeTable] = {}  # the step-0 tables per weights: the init baseline
        self._layout_written = False
        self._continues_own_run = False

    @override
    def identity(self) -> dict[str, Any]:
        return {"weights": self.weights, "pool": self.pool, "method": self.method, "layers": self._layers_arg}

    # ---- setup --------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        # Asked on every rank: trainer.log_dir is a collective under DDP, and observe() runs on rank
        # zero alone (asking there left a resumed DDP run waiting forever).
        self._continues_own_run = _continues_its_own_run(trainer)
        super().on_train_start(trainer, pl_module)

    @override
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        # Fail before training starts, not at the first evaluation.
        self.layers = check_layers(pl_module.unet, self.layers or default_layers(pl_module.unet), who="ProbeMonitor")
        saved = Path(trainer.log_dir or trainer.default_root_dir) / PROBE_SET_FILE
        if self.probe_set is None:
            if self.probe_set_path is not None:
                self.probe_set = ProbeSet.load(self.probe_set_path)
            elif saved.is_file():  # a resumed run keeps its probe set
                self.probe_set = ProbeSet.load(saved)
            else:
                datamodule = trainer.datamodule  # type: ignore[attr-defined]  # Lightning sets Trainer.datamodule without declaring it
                self.probe_set = ProbeSet.from_dataset(
                    datamodule.heldout_dataset(),
                    datamodule.concepts,
                    size=self.num_images,
                    timesteps=self.timesteps or default_timesteps(pl_module.num_train_timesteps),
                    seed=self.seed,
                )
        probe_set = self._probe_set()
        check_timesteps(probe_set.timesteps.tolist(), pl_module.num_train_timesteps, "ProbeMonitor")
        if trainer.is_global_zero and not saved.exists():
            probe_set.save(saved)
            self.probe_set_path = str(saved)

    def _probe_set(self) -> ProbeSet:
        if self.probe_set is None:
            raise RuntimeError("ProbeMonitor has no probe set yet: its setup for fit makes or loads it")
        return self.probe_set

    # ---- what ---------------------------------------------------------------------------------
    def probe(self, pl_module, use_ema: bool, precision: Callable[[], AbstractContextManager] = nullcontext) -> ProbeTable:
        """The probe table of the module's current raw or EMA weights: the eager UNet's forwards in
        ``precision`` (the training step's), the probes fitted in float32."""
        with eager(pl_module.unet), pl_module.ema_weights() if use_ema else nullcontext():
            # A conditional UNet gets the empty caption: probes read what it sees in the image,
            # not what a caption tells it.
            condition = pl_module.caption_encoder.unconditional(1) if pl_module.caption_encoder is not None else None
            return probe_unet(
                pl_module.unet, pl_module.scheduler, self._probe_set(), self.layers, self.pool, self.method, self.batch_size, condition, precision
            )

    def baselines(self, pl_module, kind: str, table: ProbeTable, step: int) -> Learned:
        """``table`` against the input baseline (made once) and the init baseline: this run's step-0
        table of the same weights (the EMA and raw weights are the initial ones at step 0; a resumed
        run whose history has no step 0 compares with the input baseline only)."""
        if self.input_table is None:
            self.input_table = probe_input(pl_module.scheduler, self._probe_set(), self.pool, self.method)
        if step == 0:
            self.init_tables[kind] = table
        return compare(table, self.input_table, self.init_tables.get(kind))

    @override
    def observe(self, trainer: pl.Trainer, pl_module, step: int) -> None:
        writer = self.writer(trainer)
        kinds = ["ema", "raw"] if self.weights == "both" else [self.weights]
        tables = {}
        for kind in kinds:  # all tables first: an interrupted evaluation leaves no trace
            with torch.no_grad():
                tables[kind] = self.probe(pl_module, use_ema=kind == "ema", precision=self.unet_precision(trainer))
        # History past this step belongs to a session that was resumed from here (TensorBoard
        # purged it too): this evaluation replaces it.
        self.history = [entry for entry in self.history if entry["step"] < step]
        for kind, table in tables.items():
            learned = self.baselines(pl_module, kind, table, step)
            self.history.append(_history_entry(step, kind, learned))
            self._log(writer, learned, step, tb.PROBE_PREFIX[kind])
            self._log_summary(writer, kind, step, pl_module.num_train_timesteps)
        if not self._layout_written and not self._continues_own_run:
            # The layout is one event at step 0 of the run folder; a run continued in place has it.
            writer.add_custom_scalars(tb.probe_layout([tb.PROBE_PREFIX[kind] for kind in kinds]))
        self._layout_written = True

    def _log_summary(self, writer, kind: str, step: int, num_train_timesteps: int) -> None:
        """When each concept is decodable and learned, now and over the evaluations so far."""
        prefix, concepts = tb.PROBE_PREFIX[kind], self._probe_set().concept_names
        mine = [entry for entry in self.history if entry["weights"] == kind and "max_learned_t" in entry]
        latest = mine[-1]
        for name in ("decodable_t", "learned_t"):
            values = {tb.probe_summary_tag(prefix, c, name): -1 if t is None else t for c, t in zip(concepts, latest[f"max_{name}"])}
            tb.log_scalars(writer, values, step)
        note = f"{kind} weights, {len(mine)} evaluation(s) to step {step}"
        claims: tuple[tuple[tb.SummaryName, str], ...] = (
            ("decodable_t", "decodable: largest t above chance"),
            ("learned_t", "learned: largest t above both baselines"),
        )
        for name, claim in claims:
            max_t = {entry["step"]: entry[f"max_{name}"] for entry in mine}
            figure = figures.largest_t_over_training(max_t, concepts, f"{claim} ({note})", num_train_timesteps, ylabel=f"largest {name[:-2]} t")
            writer.add_figure(tb.probe_summary_figure_tag(prefix, name), figure, step)
        by_step = {key: {entry["step"]: entry[key] for entry in mine} for key in ("best_above_chance", "decodable", "baseline_above_chance", "learned")}
        title = f"learned (filled) and decodable by timestep over training (best layer; {note})"
        figure = figures.decodability_over_training(
            by_step["best_above_chance"], by_step["decodable"], latest["timesteps"], concepts, title, by_step["baseline_above_chance"], by_step["learned"]
        )
        writer.add_figure(tb.probe_summary_figure_tag(prefix, "decodability"), figure, step)

    def _log(self, writer, learned: Learned, step: int, prefix: str) -> None:
        table = learned.table
        scalars = {
            tb.probe_tag(prefix, concept, layer, t): float(table.accuracy[i, j, k])
            for i, layer in enumerate(table.layers)
            for j, t in enumerate(table.timesteps)
            for k, concept in enumerate(table.concepts)
        }
        tb.log_scalars(writer, scalars, step)
        if self.heatmaps:
            kinds: tuple[HeatmapView, ...] = ("concept", "layer") if self.heatmaps is True else (self.heatmaps,)
            for by, name, figure in figures.probe_heatmaps(table, f"step {step}", by=kinds):
                writer.add_figure(tb.probe_heatmap_tag(prefix, by, name), figure, step)
            if "concept" in kinds:
                for name, figure in figures.gain_heatmaps(learned, f"step {step}"):
                    writer.add_figure(tb.probe_heatmap_tag(prefix, "gain", name), figure, step)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)  # the last evaluation
        if self.probe_set is not None:
            self.probe_set.release()  # the GPU memory its images and noise held, after fit

    # ---- state --------------------------------------------------------------------------------
    @override
    def extra_state(self) -> dict[str, Any]:
        init = {kind: asdict(table) for kind, table in self.init_tables.items()}  # plain data: tensors, lists, strings
        return {"history": self.history, "probe_set_path": self.probe_set_path, "layers": self.layers, "init_tables": init}

    @override
    def load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.probe_set_path = state_dict.get("probe_set_path") or self.probe_set_path
        self.layers = state_dict.get("layers") or self.layers
        self.init_tables = {kind: ProbeTable(**stored) for kind, stored in state_dict.get("init_tables", {}).items()}
        if self.probe_set is None and self.probe_set_path and Path(self.probe_set_path).is_file():
            self.probe_set = ProbeSet.load(self.probe_set_path)


def _history_entry(step: int, kind: str, learned: Learned) -> dict[str, Any]:
    """What the summaries over training need of one evaluation (plain data, kept in the checkpoint)."""
    table = learned.table
    baseline = (learned.gain.neg() + table.accuracy).max(0).values  # the better baseline, best over layers
    return {
        "step": step,
        "weights": kind,
        "accuracy": table.accuracy,
        "control_accuracy": table.control_accuracy,
        "p_value": table.p_value,
        "best_above_chance": table.best_above_chance(),
        "decodable": table.decodable(),
        "max_decodable_t": table.max_decodable_t(),
        "baseline_above_chance": (baseline - table.chance) / (1 - table.chance).clamp_min(1e-6),
        "gain_p_value": learned.gain_p_value,
        "learned": learned.learned.any(0),
        "max_learned_t": learned.learned_t(),
        "layers": table.layers,
        "timesteps": table.timesteps,
        "concepts": table.concepts,
    }


def _continues_its_own_run(trainer: pl.Trainer) -> bool:
    """Resumed from a checkpoint of the very run folder it logs to."""
    if not trainer.ckpt_path or not trainer.log_dir:
        return False
    return Path(trainer.ckpt_path).resolve().parent.parent == Path(trainer.log_dir).resolve()
