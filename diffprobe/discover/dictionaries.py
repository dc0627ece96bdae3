"""Sparse dictionaries of a UNet's features per (layer, t), scored against known concepts and
followed across timesteps and checkpoints.

``spatial_features`` runs the probe set's images, noised to chosen t of its grid with its own fixed
noise, through the UNet and keeps each layer's unpooled maps (the pseudo-layer ``input`` is x_t
itself: the baseline of what the noisy input already carries). ``learn`` fits a TopK SAE on every
position's channel vector and encodes the maps back; ``score`` names, for each concept value, the
feature that separates it best; ``birth_step`` and ``t_span`` follow a feature by decoder cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from diffprobe import interrupt
from diffprobe.capture import capture_maps
from diffprobe.data.probe_set import ProbeSet
from diffprobe.discover.sae import FittedSAE, SAESettings, SAEStats, fit_sae, sae_stats
from diffprobe.discover.score import MATCH_COSINE, BestFeature, best_features, mask_iou, match
from diffprobe.probes.pipeline import noised_batches

INPUT = "input"  # the pseudo-layer of x_t itself


def grid_indices(probe_set: ProbeSet, timesteps: Sequence[int]) -> list[tuple[int, int]]:
    """(grid index, t) of each chosen t; a ValueError names a t that is not in the probe set's grid."""
    grid = probe_set.timesteps.tolist()
    missing = sorted(set(timesteps) - set(grid))
    if missing:
        raise ValueError(f"timesteps {missing} are not in the probe set's grid {grid}")
    return [(j, t) for j, t in enumerate(grid) if t in set(timesteps)]


@torch.no_grad()
def spatial_features(
    unet, scheduler, probe_set: ProbeSet, layers: Sequence[str], timesteps: Sequence[int], condition: torch.Tensor | None = None, batch_size: int = 128
) -> dict[str, torch.Tensor]:
    """layer -> (T, N, C, H, W) maps of every probe image at every chosen t (``input``: x_t)."""
    chosen = grid_indices(probe_set, timesteps)
    parameter = next(unet.parameters())
    blocks = [name for name in layers if name != INPUT]
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for x_t, t in noised_batches(scheduler, probe_set, chosen, parameter.device, batch_size):
        interrupt.check()
        if INPUT in chunks:
            chunks[INPUT].append(x_t.float().cpu())
        if blocks:
            context = None if condition is None else condition.expand(x_t.shape[0], -1, -1).to(parameter.dtype)
            with capture_maps(unet, blocks) as maps:
                unet(x_t.to(parameter.dtype), t, **({} if context is None else {"encoder_hidden_states": context}))
            for name in blocks:
                chunks[name].append(maps[name].cpu())
    return {name: torch.cat(parts).unflatten(0, (len(chosen), len(probe_set))) for name, parts in chunks.items()}


@dataclass
class Dictionary:
    """One (layer, t)'s SAE, its quality, and its codes on the probe images: (N, F, H, W)."""

    layer: str
    t: int
    fitted: FittedSAE
    stats: SAEStats
    codes: torch.Tensor

    @property
    def image_activation(self) -> torch.Tensor:
        """(N, F): each feature's strongest activation over an image's positions."""
        return self.codes.amax(dim=(2, 3))

    @property
    def directions(self) -> torch.Tensor:
        return self.fitted.directions


def learn(layer: str, t: int, maps: torch.Tensor, settings: SAESettings, step: int = 0) -> Dictionary:
    """A dictionary of ``maps`` (N, C, H, W): every position's C-vector is one sample. Each
    (checkpoint step, t) starts from its own random directions (a seed derived from ``settings.seed``):
    with one shared start, dictionaries would match each other by their common initialisation."""
    n, c, h, w = maps.shape
    samples = maps.permute(0, 2, 3, 1).reshape(-1, c)
    fitted = fit_sae(samples, replace(settings, seed=settings.seed + 1_000_003 * (step + 1) + 7919 * t))
    codes = fitted.codes(samples).reshape(n, h, w, -1).permute(0, 3, 1, 2).contiguous()
    return Dictionary(layer, t, fitted, sae_stats(fitted, samples), codes)


@dataclass(frozen=True)
class ScoredFeature:
    """A concept value's best feature in one dictionary; ``iou``: where it fires against the object
    mask on the images of that value (NaN without masks)."""

    best: BestFeature
    iou: float


def score(dictionary: Dictionary, probe_set: ProbeSet) -> list[ScoredFeature]:
    if not probe_set.concepts:
        return []
    found = best_features(dictionary.image_activation, probe_set.labels, probe_set.concepts)
    scored = []
    names = list(probe_set.concepts)
    for best in found:
        k = names.index(best.concept)
        holders = probe_set.labels[:, k] == probe_set.concepts[best.concept].index(best.value)
        iou = float("nan") if probe_set.masks is None else mask_iou(dictionary.codes[holders, best.feature], probe_set.masks[holders])
        scored.append(ScoredFeature(best, iou))
    return scored


def persist_share(directions: torch.Tensor, earlier: torch.Tensor) -> float:
    """The share of a dictionary's features an earlier dictionary already had (cosine >= MATCH_COSINE)."""
    return float((match(directions, earlier)[1] >= MATCH_COSINE).float().mean())


def birth_step(feature: int, history: Sequence[tuple[int, torch.Tensor]]) -> int:
    """The first step of the unbroken chain of matches back from ``feature`` of the last entry of
    ``history`` ((step, directions) of one (layer, t), in step order)."""
    born = history[-1][0]
    for (step, earlier), (_, later) in zip(reversed(history[:-1]), reversed(history[1:])):
        index, cosine = match(later[feature : feature + 1], earlier)
        if float(cosine[0]) < MATCH_COSINE:
            break
        feature, born = int(index[0]), step
    return born


def t_span(feature: int, t: int, by_t: dict[int, torch.Tensor]) -> tuple[int, int]:
    """The range of timesteps (of one layer and checkpoint, ``by_t``: t -> directions) over which a
    chain of matches from ``feature`` at ``t`` runs without a break."""
    grid = sorted(by_t)
    position = grid.index(t)
    ends = []
    for walk in (grid[position::-1], grid[position:]):
        current, end = feature, t
        for here, there in zip(walk, walk[1:]):
            index, cosine = match(by_t[here][current : current + 1], by_t[there])
            if float(cosine[0]) < MATCH_COSINE:
                break
            current, end = int(index[0]), there
        ends.append(end)
    return ends[0], ends[1]
