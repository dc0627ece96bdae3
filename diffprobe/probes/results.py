"""The table ``probe.py linear`` keeps: one row per (checkpoint, weights, layer, t, concept), as
``probes.csv`` / ``probes.json``, and the summary of when each concept becomes decodable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from diffprobe.io.tables import ResultTable, TableSchema

FIELDS = [
    "step",
    "checkpoint",
    "weights",
    "layer",
    "t",
    "concept",
    "accuracy",
    "chance",
    "control_accuracy",
    "selectivity",
    "p_value",
    "significant",
    "ci_low",
    "ci_high",
    "n",
]


PROBE_TABLE = TableSchema(
    "probes",
    tuple(FIELDS),
    integers=frozenset({"step", "t", "n"}),
    floats=frozenset({"accuracy", "chance", "control_accuracy", "selectivity", "p_value", "ci_low", "ci_high"}),
    booleans=frozenset({"significant"}),
)
CELL = ("weights", "layer", "t", "concept")  # what one row measures on a checkpoint


def table(folder: Path) -> ResultTable:
    """``folder/probes.csv`` and ``probes.json``."""
    return ResultTable(Path(folder), PROBE_TABLE)


def read_rows(folder: Path) -> list[dict]:
    """The rows of ``folder/probes.csv`` (none when it does not exist yet), typed as
    ``ProbeTable.rows`` makes them."""
    return table(folder).read_rows()


def emergence(rows: list[dict]) -> dict:
    """Per concept: at the last step, the t range where it is decodable (significantly above chance
    at some layer); and, for each t, the first step at which it became decodable."""
    summary: dict[str, dict] = {}
    steps = sorted({int(r["step"]) for r in rows})
    for concept in sorted({r["concept"] for r in rows}):
        mine = [r for r in rows if r["concept"] == concept and str(r["significant"]) == "True"]
        last = [int(r["t"]) for r in mine if int(r["step"]) == steps[-1]]
        first_step = {}
        for t in sorted({int(r["t"]) for r in rows}):
            decoded = sorted(int(r["step"]) for r in mine if int(r["t"]) == t)
            first_step[str(t)] = decoded[0] if decoded else None
        summary[concept] = {
            "decodable_t_at_last_step": sorted(set(last)),
            "max_decodable_t": max(last) if last else None,
            "first_step_decodable_by_t": first_step,
        }
    return summary


@dataclass
class StepCurves:
    """One set of weights' rows as curves over t, per training step: ``best[step]`` (T, K) is the
    best layer's accuracy above chance ((accuracy - chance) / (1 - chance)), ``decodable[step]``
    (T, K) whether some layer's probe is significant."""

    timesteps: list[int]
    concepts: list[str]
    best: dict[int, torch.Tensor]
    decodable: dict[int, torch.Tensor]
    num_train_timesteps: int

    def max_decodable_t(self, step: int) -> list[int | None]:
        return [
            max((t for t, d in zip(self.timesteps, self.decodable[step][:, k].tolist()) if d), default=None)
            for k in range(len(self.concepts))
        ]


def step_curves(rows: list[dict], weights: str, num_train_timesteps: int) -> StepCurves:
    mine = [r for r in rows if r["weights"] == weights]
    timesteps = sorted({int(r["t"]) for r in mine})
    concepts = list(dict.fromkeys(r["concept"] for r in mine))
    best: dict[int, torch.Tensor] = {}
    decodable: dict[int, torch.Tensor] = {}
    for r in mine:
        step, j, k = int(r["step"]), timesteps.index(int(r["t"])), concepts.index(r["concept"])
        if step not in best:
            best[step] = torch.full((len(timesteps), len(concepts)), -1.0)
            decodable[step] = torch.zeros(len(timesteps), len(concepts), dtype=torch.bool)
        chance = float(r["chance"])
        best[step][j, k] = max(float(best[step][j, k]), (float(r["accuracy"]) - chance) / max(1 - chance, 1e-6))
        decodable[step][j, k] |= str(r["significant"]) == "True"
    return StepCurves(timesteps, concepts, best, decodable, num_train_timesteps)
