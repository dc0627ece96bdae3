"""Over training: when a rate first reaches a level (the learning speed) and the hidden window.

Park et al. define a concept's learning speed as 1 / the first training step at which the held-out
combination is generated at 80% or more. Measured at checkpoints with a finite number of images,
that step has two uncertainties, both kept: the Wilson interval of each rate (the first step whose
upper bound reaches the level, and the first whose lower bound does) and the checkpoint grid (the
true crossing lies after the previous checkpoint; ``interpolated`` is where the straight line
between the two checkpoints crosses the level, a finer estimate than the grid).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.8


@dataclass(frozen=True)
class FirstReach:
    """``step``: the first checkpoint whose rate reaches the level (None: none does). ``earliest``
    / ``latest``: the first whose interval's upper / lower bound does; ``previous``: the checkpoint
    before ``step`` (the grid's side of the uncertainty); ``last``: the last checkpoint measured."""

    step: int | None
    earliest: int | None
    latest: int | None
    previous: int | None
    last: int
    interpolated: float | None = None  # where the line between ``previous`` and ``step`` crosses the level

    @property
    def speed(self) -> float | None:
        """1 / step (None when the level is never reached)."""
        return None if not self.step else 1.0 / self.step

    def record(self) -> dict:
        return {
            "step": self.step, "speed": self.speed, "step_interval": [self.earliest, self.latest], "previous_checkpoint": self.previous,
            "speed_interval": [None if not self.latest else 1.0 / self.latest, None if not self.earliest else 1.0 / self.earliest],
            "reached": self.step is not None, "last_step": self.last, "interpolated_step": self.interpolated,
        }  # fmt: skip


def _first(steps: Sequence[int], values: Sequence[float], level: float) -> int | None:
    return next((s for s, v in zip(steps, values) if v >= level), None)


def first_reach(rates: Mapping[int, tuple[float, float, float]], level: float = LEVEL) -> FirstReach:
    """``rates``: step -> (rate, interval low, interval high)."""
    if not rates:
        raise ValueError("no checkpoints measured: nothing to find a first step in")
    steps = sorted(rates)
    step = _first(steps, [rates[s][0] for s in steps], level)
    previous = steps[steps.index(step) - 1] if step is not None and steps.index(step) > 0 else None
    interpolated: float | None = None if step is None else float(step)
    if step is not None and previous is not None:
        before, after = rates[previous][0], rates[step][0]
        interpolated = previous + (step - previous) * (level - before) / (after - before)
    return FirstReach(
        step, _first(steps, [rates[s][2] for s in steps], level), _first(steps, [rates[s][1] for s in steps], level), previous, steps[-1], interpolated
    )


@dataclass(frozen=True)
class HiddenWindow:
    """The steps at which an intervention already makes the combination and plain prompting does
    not yet: [opens, closes). ``opens``: the first step any intervention reaches the level (and
    which one); ``closes``: plain prompting's first (None: not by the last step, the window is
    still open). ``hidden`` is False when no intervention comes before plain prompting."""

    opens: int | None
    closes: int | None
    first_intervention: str | None
    hidden: bool

    def record(self) -> dict:
        return {"opens": self.opens, "closes": self.closes, "first_intervention": self.first_intervention, "hidden": self.hidden}


def hidden_window(first: Mapping[str, FirstReach], plain: str = "plain") -> HiddenWindow:
    """From each variant's first reach (``plain`` and the interventions)."""
    closes = first[plain].step
    reached = {name: f.step for name, f in first.items() if name != plain and f.step is not None}
    if not reached:
        return HiddenWindow(None, closes, None, False)
    name = min(reached, key=lambda n: (reached[n], n))
    opens = reached[name]
    hidden = closes is None or opens < closes
    return HiddenWindow(opens, closes, name, hidden)
