"""The table ``probe.py intervene`` keeps: ``intervene.csv`` (one row per checkpoint, weights,
mode, concept and setting) and ``intervene.json`` (the same rows, the reader's accuracy, the
settings of each mode, and per checkpoint the lock-in times and steering directions)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

FIELDS = [
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
]
_INTEGERS = ("step", "t_switch", "window_start", "window_end", "n", "successes")
_FLOATS = ("alpha", "rate", "ci_low", "ci_high", "others_kept")


def unit(row: dict) -> tuple[str, str, str, str]:
    """What one call measures at once: (checkpoint, weights, mode, concept)."""
    return (row["checkpoint"], row["weights"], row["mode"], row["concept"])


def read_rows(folder: Path) -> list[dict]:
    path = Path(folder) / "intervene.csv"
    if not path.exists():
        return []
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.update({k: (int(row[k]) if row[k] != "" else None) for k in _INTEGERS})
        row.update({k: (float(row[k]) if row[k] != "" else None) for k in _FLOATS})
    return rows


def read_summary(folder: Path) -> dict:
    path = Path(folder) / "intervene.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("summary", {})


def write(folder: Path, rows: list[dict], summary: dict) -> None:
    """``intervene.csv`` and ``intervene.json`` (rows plus ``summary``), rows in a stable order."""
    rows = sorted(rows, key=lambda r: (r["step"], r["checkpoint"], r["weights"], r["mode"], r["concept"], r["variant"], *(
        -1 if r.get(k) is None else r[k] for k in ("t_switch", "alpha", "window_start"))))  # fmt: skip
    with (Path(folder) / "intervene.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows([{k: ("" if r.get(k) is None else r[k]) for k in FIELDS} for r in rows])
    (Path(folder) / "intervene.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
