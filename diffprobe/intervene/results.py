"""The table ``probe.py intervene`` keeps, through :mod:`diffprobe.io.tables`: ``intervene.csv``
(one row per checkpoint, weights, mode, concept and setting) and ``intervene.json`` (the same rows,
the reader's accuracy, the settings of each mode, the units measured, and per checkpoint the
lock-in times and steering directions); and the pure summaries made from its rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from diffprobe.intervene.measure import SteerScore
from diffprobe.intervene.switch import InsertionCurve
from diffprobe.io.tables import Measured, ResultTable, TableSchema
from diffprobe.probes.results import step_curves

FIELDS = (
    "step",
    "checkpoint",
    "weights",
    "mode",
    "concept",
    "variant",  # switch: "switch"; steer: "probe" or "random"
    "t_switch",
    "alpha",
    "window_start",
    "window_end",
    "n",
    "successes",
    "rate",
    "ci_low",
    "ci_high",
    "others_kept",
)
INTERVENE_TABLE = TableSchema(
    "intervene",
    FIELDS,
    integers=frozenset({"step", "t_switch", "window_start", "window_end", "n", "successes"}),
    floats=frozenset({"alpha", "rate", "ci_low", "ci_high", "others_kept"}),
)
UNIT = ("weights", "mode", "concept")  # what one call measures at once on a checkpoint


def table(folder: Path) -> ResultTable:
    """``folder/intervene.csv`` and ``intervene.json``."""
    return ResultTable(Path(folder), INTERVENE_TABLE)


def sorted_rows(rows: Iterable[Mapping]) -> list[dict]:
    """Rows in a stable order, so that a rerun that measures nothing rewrites the same table."""

    def key(r):
        where = (-1 if r.get(k) is None else r[k] for k in ("t_switch", "alpha", "window_start"))
        return (r["step"], r["checkpoint"], r["weights"], r["mode"], r["concept"], r["variant"], *where)

    return [dict(r) for r in sorted(rows, key=key)]


def measured_units(rows: Iterable[Mapping], summary: Mapping) -> Measured:
    """What the table holds, as (checkpoint, step, (weights, mode, concept)) units: its rows' and
    those intervene.json lists (unscored images leave no rows)."""
    measured = Measured.of(rows, UNIT)
    for name, weights, mode, concept, step in summary.get("measured", []):
        measured.add(name, int(step), (weights, mode, concept))
    return measured


# ---- rows ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """Which weights of which checkpoint a row was measured on."""

    checkpoint: str
    step: int
    weights: str


def _row(
    where: Where, mode: str, concept: str, variant: str, successes: int, n: int, low: float, high: float, kept: float, **setting
) -> dict:
    return {
        "step": where.step, "checkpoint": where.checkpoint, "weights": where.weights, "mode": mode, "concept": concept, "variant": variant,
        "t_switch": setting.get("t_switch"), "alpha": setting.get("alpha"), "window_start": setting.get("window_start"),
        "window_end": setting.get("window_end"), "n": n, "successes": successes, "rate": successes / n, "ci_low": low, "ci_high": high,
        "others_kept": kept,
    }  # fmt: skip


def switch_rows(where: Where, curve: InsertionCurve) -> list[dict]:
    """One row per switch time of an insertion curve."""
    low, high = curve.interval
    return [
        _row(where, "switch", curve.concept, "switch", curve.successes[j], curve.n, low[j], high[j], curve.others_kept[j], t_switch=t_s)
        for j, t_s in enumerate(curve.switch_times)
    ]


def steer_rows(where: Where, concept: str, scores: Sequence[SteerScore]) -> list[dict]:
    """One row per steered variant (direction, alpha, window)."""
    return [
        _row(
            where,
            "steer",
            concept,
            s.setting.direction,
            s.successes,
            s.n,
            s.ci_low,
            s.ci_high,
            s.others_kept,
            alpha=s.setting.alpha,
            window_start=s.setting.window_start,
            window_end=s.setting.window_end,
        )  # fmt: skip
        for s in scores
    ]


# ---- summaries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointCurves:
    """The insertion curves the table holds for one checkpoint's weights, per concept."""

    checkpoint: str
    step: int
    curves: dict[str, InsertionCurve]


def insertion_curves(rows: Iterable[Mapping], weights: str) -> list[CheckpointCurves]:
    """The switch rows of ``weights`` as curves, per checkpoint in the rows' order."""
    mine = [r for r in rows if r["mode"] == "switch" and r["weights"] == weights]
    found: dict[tuple[str, int], dict[str, InsertionCurve]] = {}
    for name, step, concept in dict.fromkeys((r["checkpoint"], r["step"], r["concept"]) for r in mine):
        cells = sorted(
            (r for r in mine if (r["checkpoint"], r["step"], r["concept"]) == (name, step, concept)), key=lambda r: r["t_switch"]
        )
        curve = InsertionCurve(
            concept, [r["t_switch"] for r in cells], [r["successes"] for r in cells], cells[0]["n"], [r["others_kept"] for r in cells]
        )
        found.setdefault((name, step), {})[concept] = curve
    return [CheckpointCurves(name, step, curves) for (name, step), curves in found.items()]


def lock_in_summary(measured: Sequence[CheckpointCurves]) -> dict:
    """intervene.json's ``lock_in`` of one set of weights: per checkpoint, each concept's t_lock, its
    range, whether the caption inserts it at all, and CIS per switch time."""
    summary: dict[str, dict] = {}
    for at in measured:
        concepts = summary.setdefault(at.checkpoint, {"step": at.step, "concepts": {}})["concepts"]
        for concept, curve in at.curves.items():
            lock = curve.lock_in()
            concepts[concept] = {
                "t_lock": lock.t_lock, "low": lock.low, "high": lock.high, "inserted": lock.inserted,
                "cis_by_t_s": dict(zip(map(str, curve.switch_times), curve.rate)),
            }  # fmt: skip
    return summary


@dataclass(frozen=True)
class Decodable:
    """How far up in t a linear probe decodes each concept (above chance), and how far it is learned
    (above both baselines), at ``probe_step`` (None: at no t)."""

    probe_step: int
    up_to_t: list[int | None]
    learned_up_to_t: list[int | None]


def decodable_at(
    probe_rows: Sequence[Mapping], weights: str, num_train_timesteps: int, step: int, concepts: Sequence[str]
) -> Decodable | None:
    """From ``probe.py linear``'s rows: at ``step``, or the nearest probed step (the later one on a
    tie), the largest significantly decodable and learned t of each concept; None without rows of
    ``weights``."""
    rows = [r for r in probe_rows if r["weights"] == weights]
    if not rows:
        return None
    curves = step_curves(rows, weights, num_train_timesteps)
    probe_step = min(curves.best, key=lambda s: (abs(s - step), -s))
    decodable = dict(zip(curves.concepts, curves.max_decodable_t(probe_step)))
    learned = dict(zip(curves.concepts, curves.max_learned_t(probe_step)))
    return Decodable(probe_step, [decodable.get(c) for c in concepts], [learned.get(c) for c in concepts])


@dataclass(frozen=True)
class SettingsCheck:
    """What differs from the settings of the rows already in a folder, and the settings to keep."""

    changed: tuple[str, ...]
    settings: dict


def compare_settings(earlier: Mapping | None, current: Mapping) -> SettingsCheck:
    """Rows already in a folder stay comparable only under the same settings. Steering's probe
    cells are kept per concept: they must agree for the concepts both calls steer, and new concepts
    add theirs. ``earlier``: None (or empty) when the folder holds no rows of this mode."""
    if not earlier:
        return SettingsCheck((), dict(current))
    settings, earlier, current = dict(current), dict(earlier), dict(current)
    if "probes" in earlier and "probes" in current:
        shared = set(earlier["probes"]) & set(current["probes"])
        same = all(earlier["probes"][c] == current["probes"][c] for c in shared)
        settings["probes"] = {**earlier["probes"], **current["probes"]}
        earlier["probes"], current["probes"] = same, True
    changed = tuple(sorted(k for k in set(earlier) | set(current) if earlier.get(k) != current.get(k)))
    return SettingsCheck(changed, settings)
