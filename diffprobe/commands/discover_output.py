"""The work of ``probe.py discover`` once its inputs are checked (``commands/discover.py``): the
input's dictionaries once, then every checkpoint's (in step order), scored and followed; the tables
after every checkpoint (atomically), the figures, TensorBoard and the terminal summary at the end."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from diffprobe import interrupt
from diffprobe.commands.discover import log
from diffprobe.commands.discover_plan import DiscoverPlan, directions_path, settings_record
from diffprobe.commands.source import load_model
from diffprobe.diffusion.model import DiffusionModel
from diffprobe.discover import results
from diffprobe.discover.dictionaries import (
    INPUT,
    Dictionary,
    ScoredFeature,
    birth_step,
    learn,
    persist_share,
    score,
    spatial_features,
    t_span,
)
from diffprobe.discover.figures import best_auroc_over_training, feature_gallery
from diffprobe.io import atomic
from diffprobe.io.loading import safe_load
from diffprobe.report import tb
from diffprobe.report.writer import LazyWriter


def _dictionaries(plan: DiscoverPlan, model: DiffusionModel, layers: list[str], step: int) -> dict[tuple[str, int], Dictionary]:
    """(layer, t) -> the dictionary of ``model``'s features there (``input``: of x_t itself)."""
    maps = spatial_features(model.unet, model.scheduler, plan.probe_set, layers, plan.timesteps, model.empty_caption(), plan.batch_size)
    learned = {}
    for layer in layers:
        for index, t in enumerate(plan.timesteps):
            interrupt.check()
            learned[(layer, t)] = learn(layer, t, maps[layer][index], plan.settings, step)
    return learned


def _scored(plan: DiscoverPlan, dictionaries: dict[tuple[str, int], Dictionary]) -> dict[tuple[str, int], list[ScoredFeature]]:
    return {key: [s for s in score(d, plan.probe_set) if s.best.concept in plan.concepts] for key, d in dictionaries.items()}


def _rows(step: int, checkpoint: str, weights: str, dictionaries: dict, scored_features: dict, history: dict, input_scores: dict) -> tuple[list[dict], list[dict]]:
    """(discover rows, dictionary rows) of one checkpoint's dictionaries."""
    found_rows, dictionary_rows = [], []
    by_layer: dict[str, dict[int, torch.Tensor]] = {}
    for (layer, t), d in dictionaries.items():
        by_layer.setdefault(layer, {})[t] = d.directions
    for (layer, t), d in dictionaries.items():
        earlier = history.get((layer, t), [])
        dictionary_rows.append({
            "step": step, "checkpoint": checkpoint, "weights": weights, "layer": layer, "t": t, "features": d.fitted.sae.num_features,
            "k": d.fitted.sae.k, "explained_variance": round(d.stats.explained_variance, 4), "mean_l0": round(d.stats.mean_l0, 3),
            "dead_share": round(d.stats.dead_share, 4), "persist_share": round(persist_share(d.directions, earlier[-1][1]), 4) if earlier else None,
        })  # fmt: skip
        chain = [*earlier, (step, d.directions)]
        for scored in scored_features[(layer, t)]:
            best = scored.best
            input_auroc = input_scores.get((t, best.concept, best.value))
            found, beyond = results.found_flags(best.auroc, input_auroc)
            low, high = t_span(best.feature, t, by_layer[layer]) if layer != INPUT else (t, t)
            found_rows.append({
                "step": step, "checkpoint": checkpoint, "weights": weights, "layer": layer, "t": t, "concept": best.concept, "value": best.value,
                "feature": best.feature, "auroc": round(best.auroc, 4), "iou": None if math.isnan(scored.iou) else round(scored.iou, 4),
                "input_auroc": None if input_auroc is None else round(input_auroc, 4), "found": found, "beyond_input": beyond,
                "born_step": birth_step(best.feature, chain) if layer != INPUT else None, "t_low": low, "t_high": high,
            })  # fmt: skip
    return found_rows, dictionary_rows


def measure_and_write(plan: DiscoverPlan, first: DiffusionModel) -> Path:
    started = time.perf_counter()
    plan.folder.mkdir(parents=True, exist_ok=True)
    discover_table, dictionary_table = results.tables(plan.folder)
    found_rows, dictionary_rows = discover_table.read_rows(), dictionary_table.read_rows()
    # A step is done when dictionaries.csv (written last) has it; rows of a step a kill cut short
    # between the two tables are measured again, not kept twice.
    done = sorted({r["step"] for r in dictionary_rows if r["layer"] != INPUT})
    found_rows = [r for r in found_rows if r["step"] == -1 or r["step"] in done]
    if dictionary_rows:  # continuing an earlier run of the same settings (discover_plan checked them)
        log(f"continuing {plan.folder}: step(s) {done} already measured")
    else:
        inputs = _dictionaries(plan, first, [INPUT], -1)  # x_t noised by the model's own process; no UNet call
        found_rows, dictionary_rows = _rows(-1, "input", "input", inputs, _scored(plan, inputs), {}, {})
    input_scores = {(r["t"], r["concept"], r["value"]): r["auroc"] for r in found_rows if r["layer"] == INPUT}
    history = _history(plan, done)
    tensorboard = LazyWriter(plan.logdir)
    last: tuple[int, dict, dict] | None = None
    for number, entry in enumerate(plan.source.files, 1):
        if entry.name == "last.ckpt" and any(other.step == entry.step and other.name != entry.name for other in plan.source.files):
            log(f"{entry.name} skipped: step {entry.step} is measured as its step=N.ckpt")
            continue
        if entry.step in done:
            continue
        log(f"{entry.name} ({number} of {len(plan.source.files)})")
        model = first if number == 1 else load_model(entry, plan.weights, plan.device)
        dictionaries = _dictionaries(plan, model, plan.layers, entry.step)
        scored = _scored(plan, dictionaries)
        rows, stats = _rows(entry.step, entry.name, plan.weights, dictionaries, scored, history, input_scores)
        for key, d in dictionaries.items():
            history.setdefault(key, []).append((entry.step, d.directions))
        # The directions before the rows: a kill between the two leaves a step the rerun measures again.
        atomic.save_torch(directions_path(plan.folder, entry.step, plan.weights), {f"{layer}@{t}": d.directions for (layer, t), d in dictionaries.items()})
        found_rows += rows
        dictionary_rows += stats
        summary = {"settings": settings_record(plan), "concepts": results.concept_summary(found_rows, {c: plan.probe_set.concepts[c] for c in plan.concepts})}
        discover_table.write(found_rows, summary)
        dictionary_table.write(dictionary_rows, {"settings": settings_record(plan)})
        for concept, entry_summary in summary["concepts"].items():
            tensorboard.scalars({tb.discover_tag(concept, plan.weights): entry_summary["best_auroc"][entry.step]}, entry.step)
        last = (entry.step, dictionaries, scored)
    if last is None and done:
        last = _last_measured_again(plan, first, done[-1])
    if last is not None:
        _figures(plan, found_rows, last, tensorboard)
    tensorboard.close()
    _print_summary(plan, found_rows, dictionary_rows, time.perf_counter() - started)
    return plan.folder


def _history(plan: DiscoverPlan, steps: list[int]) -> dict[tuple[str, int], list[tuple[int, torch.Tensor]]]:
    """Every finished checkpoint's directions per (layer, t), in step order, from ``directions/``."""
    history: dict[tuple[str, int], list[tuple[int, torch.Tensor]]] = {}
    for step in steps:
        for key, directions in safe_load(directions_path(plan.folder, step, plan.weights), what="discover directions").items():
            layer, t = key.rsplit("@", 1)
            history.setdefault((layer, int(t)), []).append((step, directions))
    return history


def _last_measured_again(plan: DiscoverPlan, first: DiffusionModel, step: int) -> tuple[int, dict, dict]:
    """The newest finished checkpoint's dictionaries learned again for its figures (a rerun with
    nothing left to measure, or one stopped before the figures): each (step, t) has its own seed,
    so they are the dictionaries the tables describe."""
    entry = next(e for e in plan.source.files if e.step == step)
    model = first if entry == plan.source.files[0] else load_model(entry, plan.weights, plan.device)
    dictionaries = _dictionaries(plan, model, plan.layers, step)
    return step, dictionaries, _scored(plan, dictionaries)


def _figures(plan: DiscoverPlan, found_rows: list[dict], last: tuple[int, dict, dict], tensorboard: LazyWriter) -> None:
    step, dictionaries, scored = last
    if plan.concepts:
        summary = results.concept_summary(found_rows, {c: plan.probe_set.concepts[c] for c in plan.concepts})
        inputs = [r for r in found_rows if r["layer"] == INPUT]
        input_best = {}
        for concept in plan.concepts:
            values = plan.probe_set.concepts[concept]
            input_best[concept] = sum(max((r["auroc"] for r in inputs if r["concept"] == concept and r["value"] == v), default=0.5) for v in values) / len(values)
        title = f"discovered: best dictionary feature per concept ({plan.weights} weights)"
        atomic.save_figure(best_auroc_over_training(summary, input_best, title), plan.folder / f"best_auroc_{plan.weights}.png")
    for (layer, t), d in dictionaries.items():
        features, labels = _gallery_features(d, scored[(layer, t)], plan.top_features)
        figure = feature_gallery(plan.probe_set.images, d.codes, features, labels, f"{layer}, t = {t}, step {step}: top images per feature", top=6)
        atomic.save_figure(figure, plan.folder / "features" / f"step{step:06d}_{plan.weights}_{layer}_t{t:04d}.png")
        tensorboard.figure(tb.discover_gallery_tag(layer, t, plan.weights), figure, step)


def _gallery_features(d: Dictionary, scored_features: list[ScoredFeature], count: int) -> tuple[list[int], list[str]]:
    """The concept values' best features first (named), then the most often active others."""
    named: dict[int, str] = {}
    for scored in sorted(scored_features, key=lambda s: -s.best.auroc):
        named.setdefault(scored.best.feature, f"f{scored.best.feature}\n{scored.best.value}\n{scored.best.auroc:.2f}")
    frequency = (d.codes > 0).float().mean(dim=(0, 2, 3))
    others = [int(f) for f in frequency.argsort(descending=True) if int(f) not in named and frequency[f] > 0]
    chosen = [*list(named)[:count], *others][:count]
    return chosen, [named.get(f, f"f{f}\nactive {float(frequency[f]):.0%}") for f in chosen]


def _print_summary(plan: DiscoverPlan, found_rows: list[dict], dictionary_rows: list[dict], seconds: float) -> None:
    measured = [r for r in dictionary_rows if r["layer"] != INPUT]
    if measured:
        step = max(r["step"] for r in measured)
        print(f"\nstep {step}, {plan.weights} weights: dictionaries (TopK SAE, {plan.settings.expansion}x, k = {plan.settings.k})")
        print(f"{'layer':<16} {'t':>5} {'features':>8} {'expl. var.':>10} {'mean L0':>8} {'dead':>6} {'kept from last ckpt':>19}")
        for r in (r for r in measured if r["step"] == step):
            kept = "-" if r["persist_share"] is None else f"{r['persist_share']:.2f}"
            print(f"{r['layer']:<16} {r['t']:>5} {r['features']:>8} {r['explained_variance']:>10.3f} {r['mean_l0']:>8.2f} {r['dead_share']:>6.2f} {kept:>19}")
    if plan.concepts:
        summary = results.concept_summary(found_rows, {c: plan.probe_set.concepts[c] for c in plan.concepts})
        print("\nconcepts found without labels (at least half of its values with a feature at AUROC >= 0.9 that x_t's own dictionary lacks)")
        print(f"{'concept':<18} {'first step found':>16} {'largest t (last step)':>21}  layers")
        for concept, s in summary.items():
            first = "never" if s["first_step_found"] is None else str(s["first_step_found"])
            largest = "none" if s["largest_t_found_last_step"] is None else str(s["largest_t_found_last_step"])
            print(f"{concept:<18} {first:>16} {largest:>21}  {', '.join(s['layers_found_last_step']) or '-'}")
    print(f"\nprobe.py discover: {len(dictionary_rows)} dictionaries in {seconds / 60:.1f} min (discover.csv, dictionaries.csv, figures, features/) -> {plan.folder}")
