"""``probe.py discover``'s tables and what they say per concept.

``discover.csv``: per (step, weights, layer, t, concept, value) the best feature, its AUROC, the IoU
of where it fires with the object mask, ``input_auroc`` (the same on the dictionary of x_t itself at
that t: what the noisy input already carries), the step the feature was born (followed back by
decoder cosine) and the t range it lives over at that checkpoint. ``dictionaries.csv``: per (step,
weights, layer, t) the dictionary's explained variance, mean L0, dead-feature share and the share of
its features the previous checkpoint's dictionary already had. The input's own rows have layer
``input`` and step -1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffprobe.discover.score import FOUND_AUROC
from diffprobe.io.tables import ResultTable, TableSchema

DISCOVER_TABLE = TableSchema(
    "discover",
    ("step", "checkpoint", "weights", "layer", "t", "concept", "value", "feature", "auroc", "iou", "input_auroc", "found", "beyond_input",
     "born_step", "t_low", "t_high"),  # fmt: skip
    integers=frozenset({"step", "t", "feature", "born_step", "t_low", "t_high"}),
    floats=frozenset({"auroc", "iou", "input_auroc"}),
    booleans=frozenset({"found", "beyond_input"}),
)
DICTIONARY_TABLE = TableSchema(
    "dictionaries",
    ("step", "checkpoint", "weights", "layer", "t", "features", "k", "explained_variance", "mean_l0", "dead_share", "persist_share"),
    integers=frozenset({"step", "t", "features", "k"}),
    floats=frozenset({"explained_variance", "mean_l0", "dead_share", "persist_share"}),
)


def tables(folder: Path) -> tuple[ResultTable, ResultTable]:
    return ResultTable(Path(folder), DISCOVER_TABLE), ResultTable(Path(folder), DICTIONARY_TABLE)


def concept_summary(rows: Sequence[Mapping[str, Any]], concepts: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    """Per concept: at which (layer, t) of each checkpoint at least half of its values have a feature
    with AUROC >= FOUND_AUROC that the input's dictionary does not match at that t (``beyond_input``);
    the first such step, and at the last step the largest such t and the values found there.
    ``best_auroc``: per step the mean over values of the best AUROC over layers and t."""
    mine = [r for r in rows if r["layer"] != "input"]
    steps = sorted({r["step"] for r in mine})
    summary: dict[str, dict[str, Any]] = {}
    for concept, values in concepts.items():
        cells: dict[tuple[int, str, int], list[Mapping[str, Any]]] = {}
        for r in mine:
            if r["concept"] == concept:
                cells.setdefault((r["step"], r["layer"], r["t"]), []).append(r)
        found = {cell for cell, cell_rows in cells.items() if 2 * sum(bool(r["beyond_input"]) for r in cell_rows) >= len(values)}
        best = {}
        for step in steps:
            by_value = [max((r["auroc"] for r in mine if r["step"] == step and r["concept"] == concept and r["value"] == v), default=0.5) for v in values]
            best[step] = round(sum(by_value) / len(by_value), 4)
        last = steps[-1] if steps else None
        at_last = [cell for cell in found if cell[0] == last]
        largest = max((cell[2] for cell in at_last), default=None)
        summary[concept] = {
            "first_step_found": min((cell[0] for cell in found), default=None),
            "largest_t_found_last_step": largest,
            "layers_found_last_step": sorted({cell[1] for cell in at_last if cell[2] == largest}),
            "best_auroc": best,
        }
    return summary


def found_flags(auroc: float, input_auroc: float | None) -> tuple[bool, bool]:
    """(found, beyond the input's dictionary) for one concept value's best feature."""
    found = auroc >= FOUND_AUROC
    return found, found and (input_auroc is None or input_auroc < FOUND_AUROC)
