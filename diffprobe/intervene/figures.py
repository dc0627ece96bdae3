"""Intervention results as figures: insertion curves, lock-in over training, steering, and the
one that puts it together, decodable next to decided.

Switch time t_s runs on x from 0 (never switched) to T (switched from the first step), on a
linear axis: the lock-in time is read where the curve crosses 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps

from diffprobe.report.viz import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from diffprobe.intervene.switch import InsertionCurve, LockIn


def _panels(count: int, width: float = 2.9, height: float = 2.4):
    columns = min(3, count)
    rows = -(-count // columns)
    width = max(width, 4.0 / columns)  # one panel alone still has room for its title
    figure, axes = new_figure(rows, columns, size=(width * columns, height * rows + 0.5), dpi=100)
    for axis in list(axes.flat)[count:]:
        axis.axis("off")
    return figure, list(axes.flat)[:count]


def insertion_curves(curves: Sequence[InsertionCurve], num_train_timesteps: int, title: str) -> Figure:
    """One panel per concept: CIS(t_s) with its 95% Wilson band, the share of other concepts kept
    (dashed), 0.5 (dotted) and t_lock with its range (shaded)."""
    figure, axes = _panels(len(curves))
    for axis, curve in zip(axes, curves):
        low, high = curve.interval
        axis.fill_between(curve.switch_times, low, high, color="tab:blue", alpha=0.2, linewidth=0)
        axis.plot(curve.switch_times, curve.rate, color="tab:blue", marker="o", markersize=3, linewidth=1.4, label="CIS (B's value)")
        axis.plot(curve.switch_times, curve.others_kept, color="tab:grey", linestyle="--", linewidth=1.0, label="other concepts kept")
        axis.axhline(0.5, color="black", linestyle=":", linewidth=0.7)
        lock = curve.lock_in()
        if lock.t_lock is not None:
            axis.axvline(lock.t_lock, color="tab:red", linewidth=1.2, label=f"t_lock = {lock.t_lock:.0f}")
            if lock.low is not None and lock.high is not None:
                axis.axvspan(lock.low, lock.high, color="tab:red", alpha=0.12, linewidth=0)
        axis.set_xlim(0, num_train_timesteps)
        axis.set_ylim(-0.03, 1.03)
        axis.set_title(f"{curve.concept}  ({_lock_text(lock)})", fontsize=9)
        axis.set_xlabel("switch time t_s (caption B below it)", fontsize=8)
        axis.set_ylabel("share of images", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=6, frameon=False, loc="center right")
    figure.suptitle(title, fontsize=10)
    return figure


def _lock_text(lock: LockIn) -> str:
    if lock.t_lock is not None:
        return f"t_lock {lock.t_lock:.0f}"
    return "never inserted" if not lock.inserted else "locks in below the grid"


def lock_in_over_training(
    t_lock: Mapping[int, Mapping[str, float | None]], concepts: Sequence[str], title: str, num_train_timesteps: int
) -> Figure:
    """One line per concept: its lock-in time at each checkpoint (gaps where it has none)."""
    steps = sorted(t_lock)
    figure, axes = new_figure(size=(6.4, 3.4), dpi=100)
    axis = axes[0, 0]
    for concept in concepts:
        values = [np.nan if t_lock[s].get(concept) is None else t_lock[s][concept] for s in steps]
        axis.plot(steps, values, marker="o", markersize=4, linewidth=1.4, label=concept)
    axis.set_ylim(0, num_train_timesteps)
    axis.set_xlabel("training step", fontsize=8)
    axis.set_ylabel("lock-in time t_lock", fontsize=8)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, frameon=False, ncol=2)
    return figure


def steering_curves(rows: Sequence[dict], title: str) -> Figure:
    """Success (reader says target) against alpha, one colour per window, probe direction solid
    with its 95% band, random control of the same length dashed."""
    figure, axes = new_figure(size=(6.0, 3.6), dpi=100)
    axis = axes[0, 0]
    windows = sorted({(int(r["window_start"]), int(r["window_end"])) for r in rows}, reverse=True)
    colours = colormaps["viridis"](np.linspace(0.0, 0.9, len(windows)))
    for colour, window in zip(colours, windows):
        for variant, style in (("probe", "-"), ("random", "--")):
            chosen = sorted(
                (r for r in rows if (int(r["window_start"]), int(r["window_end"])) == window and r["variant"] == variant),
                key=lambda r: float(r["alpha"]),
            )
            if not chosen:
                continue
            alphas = [float(r["alpha"]) for r in chosen]
            axis.plot(alphas, [float(r["rate"]) for r in chosen], linestyle=style, color=colour, marker="o", markersize=3, linewidth=1.3,
                      label=f"t in [{window[0]}, {window[1]})" if variant == "probe" else None)  # fmt: skip
            if variant == "probe":
                axis.fill_between(
                    alphas,
                    [float(r["ci_low"]) for r in chosen],
                    [float(r["ci_high"]) for r in chosen],
                    color=colour,
                    alpha=0.15,
                    linewidth=0,
                )
    axis.plot([], [], color="black", linestyle="--", label="random direction (same length)")
    axis.set_ylim(-0.03, 1.03)
    axis.set_xlabel("alpha (spreads of the probe set's features along the direction)", fontsize=8)
    axis.set_ylabel("reader says target", fontsize=8)
    axis.set_title(title, fontsize=9)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=6.5, frameon=False, title="steering window (probe direction solid)", title_fontsize=6.5)
    return figure


def decodable_vs_decided(
    concepts: Sequence[str],
    decodable_t: Sequence[int | None],
    learned_t: Sequence[int | None],
    lock_in: Sequence[LockIn],
    num_train_timesteps: int,
    title: str,
) -> Figure:
    """Per concept (a row): the largest t at which a probe decodes it (hollow circle: above chance,
    which the noisy input alone may explain), the largest t at which it is learned (filled: above
    both baselines), and its lock-in time with range (diamond and bar). A concept decodable at high
    t but locked in at low t is readable long before the model commits to it."""
    figure, axes = new_figure(size=(6.6, 0.42 * len(concepts) + 1.4), dpi=110)
    axis = axes[0, 0]
    rows = np.arange(len(concepts))[::-1]
    for row, t_dec, t_learned, lock in zip(rows, decodable_t, learned_t, lock_in):
        if t_dec is not None:
            axis.scatter([t_dec], [row + 0.12], s=40, facecolors="none", edgecolors="tab:green", zorder=3)
        if t_learned is not None:
            axis.scatter([t_learned], [row + 0.12], s=40, color="tab:green", zorder=4)
        if lock.t_lock is not None:
            low = lock.low if lock.low is not None else lock.t_lock
            high = lock.high if lock.high is not None else num_train_timesteps
            axis.plot([low, high], [row - 0.12] * 2, color="tab:red", linewidth=2.2, alpha=0.5)
            axis.scatter([lock.t_lock], [row - 0.12], s=45, marker="D", color="tab:red", zorder=3)
        else:
            axis.text(2, row - 0.12, _lock_text(lock), fontsize=7, va="center", color="tab:red")
        if t_dec is not None and lock.t_lock is not None:
            axis.plot([t_dec, lock.t_lock], [row + 0.12, row - 0.12], color="grey", linewidth=0.6, linestyle=":")
    axis.scatter([], [], s=40, color="tab:green", label="learned up to t (probe above both baselines)")
    axis.scatter([], [], s=40, facecolors="none", edgecolors="tab:green", label="decodable up to t (probe above chance)")
    axis.scatter([], [], s=45, marker="D", color="tab:red", label="decided: t_lock (prompt switch; bar = 95% range)")
    axis.set_yticks(rows, list(concepts), fontsize=8)
    axis.set_xlim(0, num_train_timesteps)
    axis.set_ylim(-0.8, len(concepts) - 0.2 + 0.9)
    axis.set_xlabel("timestep t (0 = clean, sampling runs right to left)", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=7, frameon=False, loc="upper center", ncol=1)
    axis.set_title(title, fontsize=9)
    return figure
