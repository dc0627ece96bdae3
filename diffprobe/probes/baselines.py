"""What the model learned, not what the noise leaves: a probe table against its two baselines.

On the same probe set, timesteps, noise, split, pooling and probe method:

- ``input``: the probe fitted on x_t itself, pooled the way the layer features are
  (``pipeline.probe_input``): what any network could read from the noisy input;
- ``init``: the same probes on the same architecture at its initialisation (a run's step-0
  weights; for a fine-tuned model the pretrained start): what the architecture reads before
  training.

``gain`` = accuracy minus the better of the two baselines. Its significance is an exact paired
test on the same test images (McNemar's exact test: a one-sided binomial test on the discordant
pairs, as ``scipy.stats.binomtest(b, b + c, 0.5, alternative="greater")``), against each baseline;
the larger of the two p-values is the cell's, so a cell is *learned* only when it beats both.
Bonferroni over the table, like decodability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import binom

from diffprobe.probes.table import ProbeTable, largest_t


def mcnemar_p_value(model_hits: torch.Tensor, baseline_hits: torch.Tensor) -> torch.Tensor:
    """One-sided exact McNemar p-value that the model's probe is right more often than the
    baseline's on the same test images: (..., N) bool x 2 -> (...,) float64.

    b = images only the model gets right, c = only the baseline; under the null each discordant
    image is a fair coin, so p = P(X >= b), X ~ Binomial(b + c, 1/2); 1 where there is no
    discordant image."""
    model_hits, baseline_hits = torch.broadcast_tensors(model_hits.bool(), baseline_hits.bool())
    only_model = (model_hits & ~baseline_hits).sum(-1).double()
    only_baseline = (~model_hits & baseline_hits).sum(-1).double()
    tail = binom.sf(only_model.cpu().numpy() - 1, (only_model + only_baseline).cpu().numpy(), 0.5)
    return torch.as_tensor(tail, dtype=torch.float64).reshape(only_model.shape)


@dataclass
class Learned:
    """A probe table beside its baselines. ``input_accuracy`` (T, K) (one input "layer");
    ``init_accuracy`` (L, T, K) or None (no init weights: a bare diffusers folder); ``gain`` and
    ``gain_p_value`` (L, T, K)."""

    table: ProbeTable
    input_accuracy: torch.Tensor
    init_accuracy: torch.Tensor | None
    gain: torch.Tensor
    gain_p_value: torch.Tensor

    @property
    def learned(self) -> torch.Tensor:
        """(L, T, K): significantly above both baselines (Bonferroni over the table)."""
        return self.gain_p_value < self.table.alpha / self.gain_p_value.numel()

    def learned_t(self) -> list[int | None]:
        """Per concept: the largest t at which some layer's gain is significant (None: at no t)."""
        return largest_t(self.learned.any(0), self.table.timesteps)

    def rows(self, **extra) -> list[dict]:
        """The table's rows with ``input_accuracy``, ``init_accuracy`` (None without init weights),
        ``gain``, ``gain_p_value`` and ``learned``."""
        rows = self.table.rows(**extra)  # in (layer, t, concept) order
        layers, timesteps, concepts = self.table.accuracy.shape
        cells = ((i, j, k) for i in range(layers) for j in range(timesteps) for k in range(concepts))
        for row, (i, j, k) in zip(rows, cells):
            init = None if self.init_accuracy is None else round(float(self.init_accuracy[i, j, k]), 6)
            row.update(
                input_accuracy=round(float(self.input_accuracy[j, k]), 6),
                init_accuracy=init,
                gain=round(float(self.gain[i, j, k]), 6),
                gain_p_value=float(self.gain_p_value[i, j, k]),
                learned=bool(self.learned[i, j, k]),
            )
        return rows


def compare(table: ProbeTable, input_table: ProbeTable, init_table: ProbeTable | None = None) -> Learned:
    """``table`` against the input baseline (one layer) and, when given, the init baseline (the same
    layers); all three on the same probe set and split."""
    if input_table.hits.shape[0] != 1 or input_table.hits.shape[1:] != table.hits.shape[1:]:
        raise ValueError(f"the input baseline must be one layer on the same (t, concept, test image) grid; got {tuple(input_table.hits.shape)} for {tuple(table.hits.shape)}")
    if init_table is not None and (init_table.layers != table.layers or init_table.hits.shape != table.hits.shape):
        raise ValueError(f"the init baseline must probe the same layers and grid: {init_table.layers} vs {table.layers}")
    for name, other in (("input", input_table), ("init", init_table)):
        if other is not None and (other.pool, other.method) != (table.pool, table.method):
            raise ValueError(f"the {name} baseline was fitted with pool {other.pool!r} / method {other.method!r}, the table with {table.pool!r} / {table.method!r}")
    p_value = mcnemar_p_value(table.hits, input_table.hits)
    if init_table is not None:
        p_value = torch.maximum(p_value, mcnemar_p_value(table.hits, init_table.hits))
    baseline = input_table.accuracy[0].expand_as(table.accuracy)  # the better of the two, cell by cell
    if init_table is not None:
        baseline = torch.maximum(baseline, init_table.accuracy)
    init_accuracy = None if init_table is None else init_table.accuracy
    return Learned(table, input_table.accuracy[0], init_accuracy, table.accuracy - baseline, p_value)
