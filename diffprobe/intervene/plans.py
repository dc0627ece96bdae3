"""What ``probe.py intervene`` will do, decided before anything is sampled: frozen plans per
concept, and the pure functions that build them from checked inputs.

- :class:`SwitchPlan`: the caption pairs of one concept, the switch times and the sampler's
  timesteps.
- :class:`SteerPlan`: the probe cell one concept is steered with (:func:`steering_cell` is the
  rule that picks it), the two values, the captions of a conditional model, the shift lengths and
  the windows.

Every function here raises a ValueError in its own words; the command adds the flag's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from diffprobe.choices import Method, Pool
from diffprobe.data.shapes import CONCEPT_NAMES, caption, parse_caption
from diffprobe.intervene.steer import SteerSetting
from diffprobe.intervene.switch import CaptionPairs, concept_pairs

Concepts = Mapping[str, Sequence[str]]  # concept -> its values, in the data's order
Captioner = Callable[[torch.Tensor], str]  # one row (K,) of value indices -> a caption

UNSCORED = "pairs"  # the one group of given pairs that carry no known labels


@dataclass(frozen=True)
class SwitchPlan:
    """One concept's prompt switch: caption A down to each switch time, caption B below it."""

    pairs: CaptionPairs
    switch_times: tuple[int, ...]  # ascending, in [0, T]
    timesteps: tuple[int, ...]  # the sampler's, descending

    @property
    def concept(self) -> str:
        return self.pairs.concept

    @property
    def scored(self) -> bool:
        """Whether the reader can judge the images: the pairs carry value labels."""
        return self.pairs.second_labels is not None


@dataclass(frozen=True)
class ProbeCell:
    """One fitted probe of ``probe.py linear``: a layer at a timestep of the probe set's grid, and
    how its features were pooled and the probe fitted (steering refits it the same way)."""

    layer: str
    t: int
    pool: Pool = "mean"
    method: Method = "logistic"


@dataclass(frozen=True)
class SteerPlan:
    """One concept steered from ``source`` towards ``target`` along the probe at ``cell``, by each
    alpha (in spreads of the probe set's features) in each [start, end) window of timesteps."""

    concept: str
    cell: ProbeCell
    source: str
    target: str
    captions: tuple[str, ...] | None  # one per image of a conditional model (all showing source)
    alphas: tuple[float, ...]  # ascending, distinct
    windows: tuple[tuple[int, int], ...]
    timesteps: tuple[int, ...]  # the sampler's, descending
    num_images: int

    @property
    def settings(self) -> tuple[SteerSetting, ...]:
        """Every steered variant: the probe direction, then its random control of the same length."""
        return tuple(SteerSetting(variant, a, w[0], w[1]) for variant in ("probe", "random") for a in self.alphas for w in self.windows)

    def record(self) -> dict:
        """What intervene.json's settings keep of this plan (a rerun steers with the same cell)."""
        return {"layer": self.cell.layer, "t": self.cell.t, "source": self.source, "target": self.target}


# ---- prompt switch ---------------------------------------------------------------------------


def switch_times(given: Sequence[int] | None, num_train_timesteps: int, default: Sequence[int]) -> tuple[int, ...]:
    """The switch times, ascending and distinct: ``given`` or ``default`` (the probe grid). T itself
    is allowed: switched before the first step."""
    T = num_train_timesteps
    times = sorted({int(t) for t in given}) if given else sorted(int(t) for t in default)
    outside = [t for t in times if not 0 <= t <= T]
    if outside:
        raise ValueError(
            f"{outside} out of range: this model has {T} training timesteps, so t_s must be in [0, {T}] "
            f"(caption B below t_s; {T} switches before the first step)"
        )
    return tuple(times)


def label_captioner(concepts: Concepts, concept_shapes: bool) -> Captioner:
    """Captions of value-index rows: ConceptShapes' own template, else the values joined by spaces."""
    if concept_shapes:
        return lambda row: caption({name: int(v) for name, v in zip(CONCEPT_NAMES, row)})
    values = list(concepts.values())
    return lambda row: " ".join(values[k][int(v)] for k, v in enumerate(row))


def generated_pairs(
    labels: torch.Tensor, concepts: Concepts, captioner: Captioner, chosen: Sequence[str], seed: int
) -> dict[str, CaptionPairs]:
    """Per chosen concept, pairs made from the labels (N, K) of held-out images: B changes that concept."""
    values = {name: tuple(v) for name, v in concepts.items()}
    return {concept: concept_pairs(labels, values, captioner, concept, seed=seed) for concept in chosen}


def given_pairs(pairs: Sequence[tuple[str, str]], concept_shapes: bool) -> dict[str, CaptionPairs]:
    """Pairs the user wrote. On a ConceptShapes model they must be ConceptShapes captions that change
    exactly one concept, and are grouped (and scored) by it; otherwise they are one unscored group."""
    if not concept_shapes:
        return {UNSCORED: CaptionPairs(UNSCORED, [a for a, _ in pairs], [b for _, b in pairs])}
    groups: dict[str, list[tuple[str, str, dict, dict]]] = {}
    for first, second in pairs:
        a, b = parse_caption(first), parse_caption(second)
        changed = [name for name in CONCEPT_NAMES if a[name] != b[name]]
        if len(changed) != 1:
            raise ValueError(f"{first!r} and {second!r} differ in {changed or 'no concept'}; a pair must change exactly one concept")
        groups.setdefault(changed[0], []).append((first, second, a, b))

    def labels(parsed: Sequence[dict]) -> torch.Tensor:  # (N, K) in CONCEPT_NAMES order
        return torch.tensor([[p[name] for name in CONCEPT_NAMES] for p in parsed])

    return {
        concept: CaptionPairs(
            concept, [i[0] for i in items], [i[1] for i in items], labels([i[2] for i in items]), labels([i[3] for i in items])
        )
        for concept, items in groups.items()
    }


# ---- steering --------------------------------------------------------------------------------


def _above_chance(row: Mapping) -> float:
    return (row["accuracy"] - row["chance"]) / max(1 - row["chance"], 1e-6)


def steering_cell(rows: Sequence[Mapping]) -> ProbeCell:
    """The probe to steer with, among one concept's probe rows of one step: at the largest t where
    some probe is significant and at least half as far above chance as the concept's best, the best
    layer there. A concept is steered where it is already readable but, at high t, not yet fixed;
    the best cell overall often sits at t near 0, where the image is all but finished."""
    if not rows:
        raise ValueError("no probe results to choose a steering cell from")
    top = max(_above_chance(r) for r in rows)
    strong = [r for r in rows if r["significant"] and _above_chance(r) >= 0.5 * top] or list(rows)
    best = max(strong, key=lambda r: (r["t"], _above_chance(r)))
    return ProbeCell(best["layer"], int(best["t"]))


def choose_cell(
    rows: Sequence[Mapping], *, layer: str | None = None, t: int | None = None, earlier: ProbeCell | None = None
) -> ProbeCell | None:
    """One concept's steering cell from its probe rows (every step): the cell an earlier call chose
    when neither ``layer`` nor ``t`` is given and it is still probed (so that over training the same
    probe is steered with, even where later checkpoints' probes would pick another); else
    :func:`steering_cell` among the newest step's rows at ``layer`` / ``t``. None when no row fits."""
    if earlier is not None and layer is None and t is None and any((r["layer"], r["t"]) == (earlier.layer, earlier.t) for r in rows):
        return earlier
    newest = max((r["step"] for r in rows), default=None)
    fitting = [r for r in rows if r["step"] == newest and (layer is None or r["layer"] == layer) and (t is None or r["t"] == t)]
    return steering_cell(fitting) if fitting else None


def steering_values(values: Sequence[str], concept: str, source: str | None, target: str | None) -> tuple[str, str]:
    """(source, target): the given values, by default the concept's first and second."""
    if len(values) < 2:
        raise ValueError(f"concept {concept!r} has a single value; there is nothing to steer to")
    chosen = (source or values[0], target or values[1])
    for name, value in zip(("source", "target"), chosen):
        if value not in values:
            raise ValueError(f"{name} {value!r} is not a value of {concept!r}; its values are {list(values)}")
    if chosen[0] == chosen[1]:
        raise ValueError(f"source and target are both {chosen[1]!r}; steer towards a different value")
    return chosen


def source_captions(labels: torch.Tensor, concepts: Concepts, concept: str, source: str, captioner: Captioner) -> tuple[str, ...]:
    """Captions of held-out labels (N, K) with ``concept`` set to ``source``: a conditional model is
    told the value it is steered away from."""
    names = list(concepts)
    rows = labels.clone()
    rows[:, names.index(concept)] = list(concepts[concept]).index(source)
    return tuple(captioner(row) for row in rows)


def steering_windows(
    given: Sequence[Sequence[int]] | None, num_train_timesteps: int, timesteps: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """[start, end) windows of timesteps, each holding at least one of the sampler's: ``given`` or
    five equal windows over [0, T)."""
    T = num_train_timesteps
    windows = [(int(w[0]), int(w[1])) for w in given] if given else [(T * i // 5, T * (i + 1) // 5) for i in range(5)]
    bad = [list(w) for w in windows if not 0 <= w[0] < w[1] <= T]
    if bad:
        raise ValueError(f"{bad}: each must be [start, end) with 0 <= start < end <= {T} (this model's T)")
    empty = [list(w) for w in windows if not any(w[0] <= t < w[1] for t in timesteps)]
    if empty:
        raise ValueError(f"{empty} hold none of the sampler's timesteps ({len(timesteps)} steps); widen them or sample with more steps")
    return tuple(windows)


def shift_lengths(alphas: Sequence[float]) -> tuple[float, ...]:
    """The alphas, ascending and distinct (0 is the unsteered image)."""
    if not alphas:
        raise ValueError("no shift lengths; give the ones to try, e.g. '[0, 2, 4, 8]'")
    return tuple(sorted({float(a) for a in alphas}))
