"""Result tables: the CSV + JSON every ``probe.py`` command keeps, written atomically, and the one
rule for what is already measured.

A table is ``<stem>.csv`` (one row per measured cell, typed columns) and ``<stem>.json`` (the same
rows plus a summary). Both are rewritten whole after each checkpoint, through
:mod:`diffprobe.io.atomic`: a kill at any moment leaves each file as it was or complete.

What counts as measured (:class:`Measured`): a unit of work is keyed by the checkpoint's name, its
global step and what was measured on it (weights, layer, t, concept, ...). A rerun skips a unit
measured under the same name, and also one measured at the same step under another name:
``last.ckpt`` is a copy of the newest ``step=N.ckpt``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffprobe.io.atomic import write_json, write_text


@dataclass(frozen=True)
class TableSchema:
    """The columns of a table, in CSV order, and how each is read back: ``integers``, ``floats`` and
    ``booleans`` are parsed (an empty cell is None); the rest stay strings."""

    stem: str
    fields: tuple[str, ...]
    integers: frozenset[str] = frozenset()
    floats: frozenset[str] = frozenset()
    booleans: frozenset[str] = frozenset()

    def parse(self, row: Mapping[str, str]) -> dict[str, Any]:
        typed: dict[str, Any] = {}
        for name, text in row.items():
            if name in self.integers:
                typed[name] = int(float(text)) if text not in ("", None) else None
            elif name in self.floats:
                typed[name] = float(text) if text not in ("", None) else None
            elif name in self.booleans:
                typed[name] = str(text) == "True"
            else:
                typed[name] = text
        return typed


@dataclass
class ResultTable:
    """``folder/<stem>.csv`` and ``folder/<stem>.json`` of one schema."""

    folder: Path
    schema: TableSchema

    @property
    def csv_path(self) -> Path:
        return Path(self.folder) / f"{self.schema.stem}.csv"

    @property
    def json_path(self) -> Path:
        return Path(self.folder) / f"{self.schema.stem}.json"

    def read_rows(self) -> list[dict[str, Any]]:
        """The typed rows (none when the table does not exist yet)."""
        if not self.csv_path.exists():
            return []
        with self.csv_path.open(newline="") as handle:
            return [self.schema.parse(row) for row in csv.DictReader(handle)]

    def read_summary(self) -> dict[str, Any]:
        if not self.json_path.exists():
            return {}
        stored = json.loads(self.json_path.read_text())
        return stored.get("summary", {}) if isinstance(stored, dict) else {}

    def write(self, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> None:
        """Both files, each atomically: the CSV (columns in schema order, None as an empty cell) and
        the JSON ``{"summary": ..., "rows": ...}``."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.schema.fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: ("" if row.get(k) is None else row[k]) for k in self.schema.fields} for row in rows])
        write_text(self.csv_path, buffer.getvalue())
        write_json(self.json_path, {"summary": dict(summary or {}), "rows": [dict(row) for row in rows]})


class Measured:
    """What a table already holds, as (checkpoint name, step, what) units."""

    def __init__(self, units: Iterable[tuple[str, int, Hashable]] = ()):
        self._names: dict[tuple[int, Hashable], set[str]] = {}  # (step, what) -> checkpoint names
        for checkpoint, step, what in units:
            self.add(checkpoint, step, what)

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]], what: Sequence[str]) -> Measured:
        """The units of ``rows``: each row's checkpoint, step and the columns ``what``."""
        return cls((str(r["checkpoint"]), int(r["step"]), tuple(r[k] for k in what)) for r in rows)

    def found_as(self, checkpoint: str, step: int, what: Hashable) -> str | None:
        """The checkpoint name ``what`` was measured under at ``step`` (``checkpoint`` itself first),
        or None when it still has to be measured."""
        names = self._names.get((step, what), set())
        if checkpoint in names:
            return checkpoint
        return min(names) if names else None

    def add(self, checkpoint: str, step: int, what: Hashable) -> None:
        self._names.setdefault((step, what), set()).add(checkpoint)

    def forget(self, checkpoint: str, step: int, what: Hashable) -> None:
        self._names.get((step, what), set()).discard(checkpoint)
