"""A run's learning story: per concept, over training, when it is rendered (fidelity), how far into
the noise it is learned and decodable (probes against their baselines), and when during sampling it
is decided (prompt-switch lock-in time). Built from the tables ``probe.py fidelity``, ``linear`` and
``intervene`` keep; each claim keeps its own name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from diffprobe.report.viz import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RENDERED_THRESHOLD = 0.90  # fidelity from which a concept counts as rendered (fidelity.results.RENDERED)


def _largest(rows: Sequence[Mapping], flag: str) -> int | None:
    return max((int(r["t"]) for r in rows if r.get(flag)), default=None)


def probe_timeline(rows: Sequence[Mapping], weights: str = "ema") -> dict[str, dict[int, dict[str, int | None]]]:
    """concept -> step -> {"learned_t", "decodable_t"} from ``probes.csv`` rows."""
    out: dict[str, dict[int, dict[str, int | None]]] = {}
    mine = [r for r in rows if r["weights"] == weights]
    for concept in dict.fromkeys(r["concept"] for r in mine):
        for step in sorted({int(r["step"]) for r in mine if r["concept"] == concept}):
            cells = [r for r in mine if r["concept"] == concept and int(r["step"]) == step]
            out.setdefault(concept, {})[step] = {"learned_t": _largest(cells, "learned"), "decodable_t": _largest(cells, "significant")}
    return out


def lock_in_timeline(summary: Mapping[str, Any], weights: str = "ema") -> dict[str, dict[int, float | None]]:
    """concept -> step -> t_lock from ``intervene.json``'s summary (``lock_in``)."""
    out: dict[str, dict[int, float | None]] = {}
    for entry in summary.get("lock_in", {}).get(weights, {}).values():
        for concept, lock in entry["concepts"].items():
            out.setdefault(concept, {})[int(entry["step"])] = lock.get("t_lock")
    return out


def learning_story(
    fidelity_rows: Sequence[Mapping], rendered: Mapping[str, int | None], probe_rows: Sequence[Mapping], intervene_summary: Mapping[str, Any],
    *, weights: str = "ema", command: str = "", train_minutes: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``{"command", "train_minutes", "concepts": {concept: {"fidelity_final", "rendered_at_step",
    "learned_t_final", "decodable_t_final", "t_lock_final", "over_training": [{"step", "fidelity",
    "learned_t", "decodable_t", "t_lock"}, ...]}}}``; a number nobody measured at a step is None."""
    fidelity = {(r["concept"], int(r["step"])): float(r["value"]) for r in fidelity_rows if r["weights"] == weights}
    probes, locks = probe_timeline(probe_rows, weights), lock_in_timeline(intervene_summary, weights)
    concepts = list(dict.fromkeys([c for c, _ in fidelity] + list(probes) + list(locks)))
    story: dict[str, Any] = {"command": command, "train_minutes": train_minutes, "concepts": {}}
    for concept in concepts:
        steps = sorted({s for c, s in fidelity if c == concept} | set(probes.get(concept, {})) | set(locks.get(concept, {})))
        timeline = [
            {
                "step": step,
                "fidelity": fidelity.get((concept, step)),
                "learned_t": probes.get(concept, {}).get(step, {}).get("learned_t"),
                "decodable_t": probes.get(concept, {}).get(step, {}).get("decodable_t"),
                "t_lock": locks.get(concept, {}).get(step),
            }
            for step in steps
        ]
        probed, locked = probes.get(concept, {}), locks.get(concept, {})
        story["concepts"][concept] = {
            "fidelity_final": _last(timeline, "fidelity", {s for c, s in fidelity if c == concept}),
            "rendered_at_step": rendered.get(concept),
            # At the last step each was measured; None there means "at no t" (or never decided).
            "learned_t_final": _last(timeline, "learned_t", set(probed)),
            "decodable_t_final": _last(timeline, "decodable_t", set(probed)),
            "t_lock_final": _last(timeline, "t_lock", set(locked)),
            "over_training": timeline,
        }
    return story


def _last(timeline: Sequence[Mapping], key: str, measured_at: set[int]):
    """``key`` at the last step it was measured at (None when it never was)."""
    measured = [e for e in timeline if e["step"] in measured_at]
    return measured[-1][key] if measured else None


def story_figure(story: Mapping[str, Any], num_train_timesteps: int, title: str) -> Figure:
    """Per concept, over training steps: fidelity (left axis, the step it is rendered marked), and on
    the right axis its learned t, decodable t (dashed) and lock-in t (diamonds)."""
    concepts = list(story["concepts"])
    columns = min(3, len(concepts))
    rows = -(-len(concepts) // columns)
    figure, axes = new_figure(rows, columns, size=(3.6 * columns, 2.7 * rows + 0.5), dpi=100)
    for axis, concept in zip(axes.flat, concepts):
        entry = story["concepts"][concept]
        timeline = entry["over_training"]
        _fidelity_panel(axis, timeline, entry["rendered_at_step"])
        right = axis.twinx()
        for key, style, label in (("learned_t", "-", "learned t"), ("decodable_t", "--", "decodable t")):
            points = [(e["step"], -50 if e[key] is None else e[key]) for e in timeline if key == "decodable_t" or e["decodable_t"] is not None or e[key] is not None]
            if points:
                right.plot(*zip(*points), style, color="tab:blue", linewidth=1.2, marker="o", markersize=2.5, label=label)
        locks = [(e["step"], e["t_lock"]) for e in timeline if e["t_lock"] is not None]
        if locks:
            right.plot(*zip(*locks), "D", color="tab:red", markersize=4, label="t_lock (decided)")
        right.set_ylim(-80, num_train_timesteps)
        right.set_ylabel("timestep t", fontsize=7, color="tab:blue")
        right.tick_params(labelsize=6)
        axis.set_title(concept, fontsize=9)
    for axis in list(axes.flat)[len(concepts) :]:
        axis.axis("off")
    handles = [h for a in figure.axes for h in a.get_legend_handles_labels()[0]]
    labels = [lab for a in figure.axes for lab in a.get_legend_handles_labels()[1]]
    unique = dict(zip(labels, handles))
    # "outside": the constrained layout makes room below the panels (matplotlib >= 3.7).
    figure.legend(unique.values(), unique.keys(), fontsize=7, frameon=False, loc="outside lower center", ncol=len(unique))
    figure.suptitle(title, fontsize=10)
    return figure


def _fidelity_panel(axis, timeline: Sequence[Mapping], rendered_at: int | None) -> None:
    points = [(e["step"], e["fidelity"]) for e in timeline if e["fidelity"] is not None]
    if points:
        axis.plot(*zip(*points), color="black", linewidth=1.4, marker="o", markersize=2.5, label="rendered: fidelity")
    axis.axhline(RENDERED_THRESHOLD, color="grey", linestyle=":", linewidth=0.8)
    if rendered_at is not None:
        axis.axvline(rendered_at, color="tab:green", linewidth=1.0, label="rendered from this step")
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("training step", fontsize=7)
    axis.set_ylabel("fidelity", fontsize=7)
    axis.tick_params(labelsize=6)
    axis.set_xticks(np.unique([e["step"] for e in timeline])[:: max(1, len(timeline) // 5)])
