"""ProbeTable: one set of weights' linear probe results per (layer, t, concept) on a probe set."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffprobe.choices import Method, Pool


@dataclass
class ProbeTable:
    """Results for one set of weights. Tensors are (L, T, K) = (layers, timesteps, concepts)
    unless noted; ``chance`` is (K,): the best accuracy a constant answer reaches on the test split
    (``chance_level``), the null of ``p_value`` and ``significant``. ``hits`` (L, T, K, N_test) bool:
    which test image each probe got right (what a paired comparison with a baseline needs).
    ``pool`` and ``method``: how the features were pooled and the probes fitted."""

    layers: list[str]
    timesteps: list[int]
    concepts: list[str]
    accuracy: torch.Tensor
    control_accuracy: torch.Tensor
    chance: torch.Tensor
    p_value: torch.Tensor
    ci_low: torch.Tensor
    ci_high: torch.Tensor
    hits: torch.Tensor
    pool: Pool = "mean"
    method: Method = "logistic"
    alpha: float = 0.05

    @property
    def n_test(self) -> int:
        return int(self.hits.shape[-1])

    @property
    def selectivity(self) -> torch.Tensor:
        """Accuracy minus control-task accuracy (Hewitt & Liang 2019)."""
        return self.accuracy - self.control_accuracy

    @property
    def significant(self) -> torch.Tensor:
        """Above chance at level alpha, Bonferroni-corrected over all cells of the table."""
        return self.p_value < self.alpha / self.p_value.numel()

    def decodable(self) -> torch.Tensor:
        """(T, K): some layer's probe is significant at t."""
        return self.significant.any(0)

    def best_above_chance(self) -> torch.Tensor:
        """(T, K): the best layer's accuracy as the share of the way from chance (0) to perfect (1)."""
        return (self.accuracy.max(0).values - self.chance) / (1 - self.chance).clamp_min(1e-6)

    def max_decodable_t(self) -> list[int | None]:
        """Per concept: the largest t at which it is significantly decodable (None: at no t)."""
        return largest_t(self.decodable(), self.timesteps)

    def rows(self, **extra) -> list[dict]:
        """One dict per (layer, t, concept), for CSV / JSON."""
        rows = []
        for i, layer in enumerate(self.layers):
            for j, t in enumerate(self.timesteps):
                for k, concept in enumerate(self.concepts):
                    rows.append(
                        {
                            **extra,
                            "layer": layer,
                            "t": t,
                            "concept": concept,
                            "accuracy": round(float(self.accuracy[i, j, k]), 6),
                            "chance": round(float(self.chance[k]), 6),
                            "control_accuracy": round(float(self.control_accuracy[i, j, k]), 6),
                            "selectivity": round(float(self.selectivity[i, j, k]), 6),
                            "p_value": float(self.p_value[i, j, k]),
                            "significant": bool(self.significant[i, j, k]),
                            "ci_low": round(float(self.ci_low[i, j, k]), 6),
                            "ci_high": round(float(self.ci_high[i, j, k]), 6),
                            "n": self.n_test,
                            "pool": self.pool,
                            "method": self.method,
                        }
                    )
        return rows


def largest_t(mask: torch.Tensor, timesteps: list[int]) -> list[int | None]:
    """(T, K) bool -> per concept the largest t where ``mask`` holds (None where it never does)."""
    return [max((t for t, on in zip(timesteps, mask[:, k].tolist()) if on), default=None) for k in range(mask.shape[1])]
