"""From a UNet and a probe set to a table of probe results per (layer, t, concept), and the input
baseline: the same probes on the noised input x_t itself, pooled the way the features are.

No Lightning here: works on any diffusers UNet in a notebook, in the ProbeMonitor callback and in
``probe.py linear``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from diffprobe import interrupt
from diffprobe.capture import capture_features, default_layers, eval_mode, pool_features
from diffprobe.choices import Method, Pool
from diffprobe.data.probe_set import ProbeSet
from diffprobe.probes.fit import fit_probes
from diffprobe.probes.stats import binomial_p_value, chance_level, wilson_interval
from diffprobe.probes.table import ProbeTable

INPUT_LAYER = "x_t"  # the input baseline's one "layer": the noised input itself


def _check_grid(scheduler, probe_set: ProbeSet, only: Sequence[int] | None) -> list[tuple[int, int]]:
    """The (grid index, t) pairs to run; ValueErrors for a grid outside [0, T) or an ``only`` off it."""
    num_train_timesteps = scheduler.config.num_train_timesteps
    if int(probe_set.timesteps.max()) >= num_train_timesteps or int(probe_set.timesteps.min()) < 0:
        raise ValueError(
            f"probe-set timesteps {probe_set.timesteps.tolist()} must lie in [0, {num_train_timesteps}) for this "
            f"scheduler (T = {num_train_timesteps}); build the probe set with timesteps below T"
        )
    grid = probe_set.timesteps.tolist()
    missing = sorted(set(only or []) - set(grid))
    if missing:
        raise ValueError(f"timesteps {missing} are not in the probe set's grid {grid}")
    return [(j, t) for j, t in enumerate(grid) if only is None or t in only]


def noised_batches(
    scheduler, probe_set: ProbeSet, chosen: list[tuple[int, int]], device: torch.device, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The probe images noised to each chosen t with the grid's own noise, as one t-major stream of
    (x_t (B, C, H, W), t (B,)) batches that may span timesteps (the UNet takes a timestep per
    sample), so a small probe set still fills large batches. The images go to ``device`` once."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of UNet inputs, got {batch_size}")
    images = probe_set.images_on(device)
    waiting: tuple[torch.Tensor, torch.Tensor] | None = None  # the stream's (x_t, t) rows not yet handed out (fewer than a batch)
    for j, t in chosen:
        timesteps = torch.full((len(images),), t, device=device, dtype=torch.long)
        x_t = scheduler.add_noise(images, probe_set.noise_on(j, device), timesteps)
        if waiting is not None:
            x_t, timesteps = torch.cat([waiting[0], x_t]), torch.cat([waiting[1], timesteps])
        while len(x_t) >= batch_size:
            yield x_t[:batch_size], timesteps[:batch_size]
            x_t, timesteps = x_t[batch_size:], timesteps[batch_size:]
        waiting = (x_t, timesteps) if len(x_t) else None
    if waiting is not None:
        yield waiting


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
    """
    chosen = _check_grid(scheduler, probe_set, only)
    parameter = next(unet.parameters())
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for x_t, timesteps in noised_batches(scheduler, probe_set, chosen, parameter.device, batch_size):
        interrupt.check()
        context = None if condition is None else condition.expand(x_t.shape[0], -1, -1).to(parameter.dtype)
        with capture_features(unet, layers, pool) as features, precision():
            if context is None:
                unet(x_t.to(parameter.dtype), timesteps)
            else:
                unet(x_t.to(parameter.dtype), timesteps, encoder_hidden_states=context)
        for name in layers:
            chunks[name].append(features[name])
    # The stream is t-major: (T * N, D) -> (T, N, D).
    return {name: torch.cat(parts).view(len(chosen), len(probe_set), -1) for name, parts in chunks.items()}


@torch.no_grad()
def input_features(scheduler, probe_set: ProbeSet, pool: Pool = "mean", device: str | torch.device = "cpu", batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """The input baseline's features: x_t itself, pooled as the layer features are, ``{"x_t": (T, N, D)}``
    (D = channels x cells). What any network could read from the noisy input, before it learned anything."""
    chosen = _check_grid(scheduler, probe_set, None)
    parts = [pool_features(x_t, pool) for x_t, _ in noised_batches(scheduler, probe_set, chosen, torch.device(device), batch_size)]
    return {INPUT_LAYER: torch.cat(parts).view(len(chosen), len(probe_set), -1)}


def probe_features(
    features: dict[str, torch.Tensor], probe_set: ProbeSet, method: Method = "logistic", alpha: float = 0.05, pool: Pool = "mean"
) -> ProbeTable:
    """Fit every probe on the fixed train/test split of the probe set (``pool`` is recorded)."""
    train, test = probe_set.split()
    num_classes = [len(v) for v in probe_set.concepts.values()]
    labels = torch.cat([probe_set.labels, probe_set.control_labels], dim=1)
    k = len(num_classes)
    accuracy, control, hits = [], [], []
    for values in features.values():
        interrupt.check()  # one layer's fits can take seconds (logistic, large probe sets)
        fit = fit_probes(values[:, train], labels[train], values[:, test], labels[test], num_classes * 2, method=method)
        accuracy.append(fit.accuracy[:, :k])
        control.append(fit.accuracy[:, k:])
        hits.append(fit.hits[:, :, :k].permute(0, 2, 1))  # (T, K, N_test)
    hits_all = torch.stack(hits)
    n = len(test)
    correct = hits_all.sum(-1)
    chance = chance_level(probe_set.labels[test], num_classes)
    low, high = wilson_interval(correct, n)
    return ProbeTable(
        layers=list(features),
        timesteps=probe_set.timesteps.tolist(),
        concepts=probe_set.concept_names,
        accuracy=torch.stack(accuracy),
        control_accuracy=torch.stack(control),
        chance=chance,
        p_value=binomial_p_value(correct, n, chance),
        ci_low=low,
        ci_high=high,
        hits=hits_all,
        pool=pool,
        method=method,
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
    return probe_features(features, probe_set, method, pool=pool)


def probe_input(scheduler, probe_set: ProbeSet, pool: Pool = "mean", method: Method = "logistic") -> ProbeTable:
    """The input baseline's table (one layer, ``x_t``): the same probes on the pooled noised input."""
    return probe_features(input_features(scheduler, probe_set, pool), probe_set, method, pool=pool)
