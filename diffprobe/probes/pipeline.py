"""From a UNet and a probe set to a table of probe results per (layer, t, concept).

No Lightning here: works on any diffusers UNet in a notebook, in the ProbeMonitor callback and in
``probe.py linear``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from diffprobe import interrupt
from diffprobe.capture import capture_features, default_layers, eval_mode
from diffprobe.capture.activations import Pool
from diffprobe.data.probe_set import ProbeSet
from diffprobe.probes.fit import Method, fit_probes
from diffprobe.probes.stats import binomial_p_value, chance_level, wilson_interval


@dataclass
class ProbeTable:
    """Results for one set of weights. Tensors are (L, T, K) = (layers, timesteps, concepts)
    unless noted; ``chance`` is (K,): the best accuracy a constant answer reaches on the test split
    (``chance_level``), the null of ``p_value`` and ``significant``."""

    layers: list[str]
    timesteps: list[int]
    concepts: list[str]
    accuracy: torch.Tensor
    control_accuracy: torch.Tensor
    chance: torch.Tensor
    p_value: torch.Tensor
    ci_low: torch.Tensor
    ci_high: torch.Tensor
    n_test: int
    alpha: float = 0.05

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
        decodable = self.decodable()
        return [max((t for t, d in zip(self.timesteps, decodable[:, k].tolist()) if d), default=None) for k in range(len(self.concepts))]

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
                        }
                    )
        return rows


@torch.no_grad()
def extract_features(
    unet,
    scheduler,
    probe_set: ProbeSet,
    layers: Sequence[str],
    pool: Pool = "mean",
    batch_size: int = 128,
    condition: torch.Tensor | None = None,
    only: Sequence[int] | None = None,
    precision: Callable[[], AbstractContextManager] = nullcontext,
) -> dict[str, torch.Tensor]:
    """Pooled features of every probe image noised to every t of the grid: layer -> (T, N, D).

    ``condition``: (1, L, D) context for a conditional UNet (the empty caption, so that probes read
    what the UNet sees in the image, not what the caption tells it). ``only``: the timesteps to
    extract (a subset of the grid, each with the grid's own noise); T is then len(only).
    ``precision``: the context each UNet call runs in (a training run's autocast, for example).

    The (t, image) pairs run as one stream in batches of ``batch_size`` that may span timesteps
    (the UNet takes a timestep per sample), so a small probe set still fills large batches. The
    images go to the UNet's device once; each t's noise once.
    """
    num_train_timesteps = scheduler.config.num_train_timesteps
    if int(probe_set.timesteps.max()) >= num_train_timesteps or int(probe_set.timesteps.min()) < 0:
        raise ValueError(
            f"probe-set timesteps {probe_set.timesteps.tolist()} must lie in [0, {num_train_timesteps}) for this "
            f"scheduler (T = {num_train_timesteps}); build the probe set with timesteps below T"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of UNet inputs, got {batch_size}")
    grid = probe_set.timesteps.tolist()
    missing = sorted(set(only or []) - set(grid))
    if missing:
        raise ValueError(f"timesteps {missing} are not in the probe set's grid {grid}")
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    images = probe_set.images_on(device)
    chosen = [(j, t) for j, t in enumerate(grid) if only is None or t in only]
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def run(x_t: torch.Tensor, timesteps: torch.Tensor) -> None:
        interrupt.check()
        with capture_features(unet, layers, pool) as features, precision():
            if condition is None:
                unet(x_t.to(dtype), timesteps)
            else:
                unet(x_t.to(dtype), timesteps, encoder_hidden_states=condition.expand(x_t.shape[0], -1, -1).to(dtype))
        for name in layers:
            chunks[name].append(features[name])

    waiting_x = waiting_t = None  # the stream's rows not yet run (fewer than a batch)
    for j, t in chosen:
        timesteps = torch.full((len(images),), t, device=device, dtype=torch.long)
        x_t = scheduler.add_noise(images, probe_set.noise_on(j, device), timesteps)
        if waiting_x is not None:
            x_t, timesteps = torch.cat([waiting_x, x_t]), torch.cat([waiting_t, timesteps])
        while len(x_t) >= batch_size:
            run(x_t[:batch_size], timesteps[:batch_size])
            x_t, timesteps = x_t[batch_size:], timesteps[batch_size:]
        waiting_x, waiting_t = (x_t, timesteps) if len(x_t) else (None, None)
    if waiting_x is not None:
        run(waiting_x, waiting_t)
    # The stream is t-major: (T * N, D) -> (T, N, D).
    return {name: torch.cat(parts).view(len(chosen), len(images), -1) for name, parts in chunks.items()}


def probe_features(features: dict[str, torch.Tensor], probe_set: ProbeSet, method: Method = "logistic", alpha: float = 0.05) -> ProbeTable:
    """Fit every probe on the fixed train/test split of the probe set."""
    train, test = probe_set.split()
    num_classes = [len(v) for v in probe_set.concepts.values()]
    labels = torch.cat([probe_set.labels, probe_set.control_labels], dim=1)
    k = len(num_classes)
    accuracy, control, correct = [], [], []
    for values in features.values():
        interrupt.check()  # one layer's fits can take seconds (logistic, large probe sets)
        fit = fit_probes(values[:, train], labels[train], values[:, test], labels[test], num_classes * 2, method=method)
        accuracy.append(fit.accuracy[:, :k])
        control.append(fit.accuracy[:, k:])
        correct.append(fit.correct[:, :k])
    correct_all = torch.stack(correct)
    n = len(test)
    chance = chance_level(probe_set.labels[test], num_classes)
    low, high = wilson_interval(correct_all, n)
    return ProbeTable(
        layers=list(features),
        timesteps=probe_set.timesteps.tolist(),
        concepts=probe_set.concept_names,
        accuracy=torch.stack(accuracy),
        control_accuracy=torch.stack(control),
        chance=chance,
        p_value=binomial_p_value(correct_all, n, chance),
        ci_low=low,
        ci_high=high,
        n_test=n,
        alpha=alpha,
    )


def probe_unet(
    unet,
    scheduler,
    probe_set: ProbeSet,
    layers: Sequence[str] | None = None,
    pool: Pool = "mean",
    method: Method = "logistic",
    batch_size: int = 128,
    condition: torch.Tensor | None = None,
    precision: Callable[[], AbstractContextManager] = nullcontext,
) -> ProbeTable:
    """Features + probes in one call: the whole per-(layer, t, concept) table for these weights.
    ``precision`` applies to the UNet's forwards only; probes are fitted in float32."""
    layers = list(layers) if layers is not None else default_layers(unet)
    with eval_mode(unet):
        features = extract_features(unet, scheduler, probe_set, layers, pool, batch_size, condition, precision=precision)
    return probe_features(features, probe_set, method)
