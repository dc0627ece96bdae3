"""The table ``probe.py linear`` keeps: one row per (checkpoint, weights, layer, t, concept), as
``probes.csv`` / ``probes.json``, with both baselines beside each probe, and the summaries built
from it (when each concept becomes decodable and learned, curves per training step)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from diffprobe.io.tables import ResultTable, TableSchema
from diffprobe.probes.table import largest_t

PROBE_TABLE = TableSchema(
    "probes",
    (
        "step", "checkpoint", "weights", "layer", "t", "concept", "accuracy", "chance", "control_accuracy", "selectivity", "p_value",
        "significant", "ci_low", "ci_high", "n", "input_accuracy", "init_accuracy", "gain", "gain_p_value", "learned", "pool", "method",
    ),  # fmt: skip
    integers=frozenset({"step", "t", "n"}),
    floats=frozenset({"accuracy", "chance", "control_accuracy", "selectivity", "p_value", "ci_low", "ci_high", "input_accuracy", "init_accuracy", "gain", "gain_p_value"}),
    booleans=frozenset({"significant", "learned"}),
)
CELL = ("weights", "layer", "t", "concept")  # what one row measures on a checkpoint


def table(folder: Path) -> ResultTable:
    """``folder/probes.csv`` and ``probes.json``."""
    return ResultTable(Path(folder), PROBE_TABLE)


def read_rows(folder: Path) -> list[dict]:
    """The rows of ``folder/probes.csv`` (none when it does not exist yet), typed."""
    return table(folder).read_rows()


def _first_step(rows: list[dict], flag: str) -> dict[str, int | None]:
    """For each t, the first step at which some row there has ``flag`` set."""
    return {str(t): min((int(r["step"]) for r in rows if int(r["t"]) == t and r.get(flag)), default=None) for t in sorted({int(r["t"]) for r in rows})}


def emergence(rows: list[dict]) -> dict:
    """Per concept: at the last step, the t range where it is decodable (significantly above chance
    at some layer) and where it is learned (significantly above both baselines); and, for each t,
    the first step at which it became decodable and learned."""
    summary: dict[str, dict] = {}
    last_step = max(int(r["step"]) for r in rows)
    for concept in sorted({r["concept"] for r in rows}):
        mine = [r for r in rows if r["concept"] == concept]
        decodable = sorted({int(r["t"]) for r in mine if int(r["step"]) == last_step and r["significant"]})
        learned = sorted({int(r["t"]) for r in mine if int(r["step"]) == last_step and r.get("learned")})
        summary[concept] = {
            "decodable_t_at_last_step": decodable,
            "max_decodable_t": max(decodable, default=None),
            "learned_t_at_last_step": learned,
            "max_learned_t": max(learned, default=None),
            "first_step_decodable_by_t": _first_step(mine, "significant"),
            "first_step_learned_by_t": _first_step(mine, "learned"),
        }
    return summary


def _above_chance(accuracy: float | None, chance: float) -> float:
    return -1.0 if accuracy is None else (accuracy - chance) / max(1 - chance, 1e-6)


@dataclass
class StepCurves:
    """One set of weights' rows as curves over t, per training step, each (T, K): ``best[step]``
    the best layer's accuracy above chance ((accuracy - chance) / (1 - chance)); ``baseline[step]``
    the better baseline's, the same way (the best over layers); ``decodable[step]`` whether some
    layer's probe is significant; ``learned[step]`` whether some layer's gain is."""

    timesteps: list[int]
    concepts: list[str]
    best: dict[int, torch.Tensor]
    baseline: dict[int, torch.Tensor]
    decodable: dict[int, torch.Tensor]
    learned: dict[int, torch.Tensor]
    num_train_timesteps: int

    def max_decodable_t(self, step: int) -> list[int | None]:
        return largest_t(self.decodable[step], self.timesteps)

    def max_learned_t(self, step: int) -> list[int | None]:
        return largest_t(self.learned[step], self.timesteps)


def step_curves(rows: Sequence[Mapping], weights: str, num_train_timesteps: int) -> StepCurves:
    mine = [r for r in rows if r["weights"] == weights]
    timesteps = sorted({int(r["t"]) for r in mine})
    concepts = list(dict.fromkeys(r["concept"] for r in mine))
    shape = (len(timesteps), len(concepts))
    best: dict[int, torch.Tensor] = {}
    baseline: dict[int, torch.Tensor] = {}
    decodable: dict[int, torch.Tensor] = {}
    learned: dict[int, torch.Tensor] = {}
    for r in mine:
        step, j, k = int(r["step"]), timesteps.index(int(r["t"])), concepts.index(r["concept"])
        if step not in best:
            best[step], baseline[step] = torch.full(shape, -1.0), torch.full(shape, -1.0)
            decodable[step], learned[step] = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
        chance = float(r["chance"])
        better = max((a for a in (r.get("input_accuracy"), r.get("init_accuracy")) if a is not None), default=None)
        best[step][j, k] = max(float(best[step][j, k]), _above_chance(float(r["accuracy"]), chance))
        baseline[step][j, k] = max(float(baseline[step][j, k]), _above_chance(better, chance))
        decodable[step][j, k] |= bool(r["significant"])
        learned[step][j, k] |= bool(r.get("learned"))
    return StepCurves(timesteps, concepts, best, baseline, decodable, learned, num_train_timesteps)
