"""The table ``probe.py fidelity`` keeps (``fidelity.csv`` / ``fidelity.json``): one row per
(checkpoint, weights, concept), and what is read off it (when each concept is rendered)."""

from __future__ import annotations

from pathlib import Path

from diffprobe.fidelity.measure import ConceptScore, rendered_at_step
from diffprobe.io.tables import ResultTable, TableSchema

FIDELITY_TABLE = TableSchema(
    "fidelity",
    ("step", "checkpoint", "weights", "concept", "metric", "value", "ci_low", "ci_high", "confident", "n", "memorised"),
    integers=frozenset({"step", "n"}),
    floats=frozenset({"value", "ci_low", "ci_high", "confident", "memorised"}),
)
UNIT = ("weights", "concept")  # what one row measures on a checkpoint
RENDERED = {"fidelity": (0.90, True), "tv": (0.10, False)}  # threshold, higher is better


def table(folder: Path) -> ResultTable:
    return ResultTable(Path(folder), FIDELITY_TABLE)


def score_rows(scores: list[ConceptScore], *, step: int, checkpoint: str, weights: str, memorised: float | None = None) -> list[dict]:
    return [
        {"step": step, "checkpoint": checkpoint, "weights": weights, "concept": s.concept, "metric": s.metric, "value": round(s.value, 6),
         "ci_low": s.ci_low, "ci_high": s.ci_high, "confident": s.confident, "n": s.n, "memorised": memorised}
        for s in scores
    ]  # fmt: skip


def by_step(rows: list[dict], weights: str) -> dict[str, dict[int, float]]:
    """concept -> {step: value} of one set of weights (one row per step: a copy such as
    last.ckpt adds nothing)."""
    curves: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["weights"] == weights:
            curves.setdefault(r["concept"], {})[int(r["step"])] = float(r["value"])
    return curves


def rendered(rows: list[dict], weights: str) -> dict[str, int | None]:
    """Per concept, the first step from which it is rendered (fidelity >= 0.90 or TV <= 0.10 at
    every later step); None when it is not at the last step."""
    metric = {r["concept"]: r["metric"] for r in rows if r["weights"] == weights}
    out = {}
    for concept, values in by_step(rows, weights).items():
        threshold, higher = RENDERED[metric[concept]]
        out[concept] = rendered_at_step(values, threshold, higher)
    return out
