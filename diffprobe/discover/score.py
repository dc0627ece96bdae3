"""What a dictionary's features are: scored against known concepts (AUROC of an image-level
activation, IoU of the activation map with the object mask) and matched to another dictionary's
features (decoder cosine), so a feature can be followed across timesteps and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import rankdata

# A feature of one dictionary continues in another when their directions' cosine is at least this.
MATCH_COSINE = 0.7
# A concept value is found when some feature separates it from the other values this well.
FOUND_AUROC = 0.9


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """(N, F) scores, (N,) bool -> (F,) area under the ROC curve of each column, one value against
    the rest (Mann-Whitney U with average ranks for ties; 0.5 when a class is empty)."""
    positive = positive.bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return torch.full((scores.shape[1],), 0.5)
    ranks = torch.from_numpy(rankdata(scores.double().numpy(), axis=0))
    u = ranks[positive].sum(dim=0) - n_pos * (n_pos + 1) / 2
    return (u / (n_pos * n_neg)).float()


@dataclass(frozen=True)
class BestFeature:
    concept: str
    value: str
    feature: int
    auroc: float


def best_features(image_activation: torch.Tensor, labels: torch.Tensor, concepts: dict[str, tuple[str, ...]]) -> list[BestFeature]:
    """For each concept value, the feature whose image-level activation (N, F) separates it best."""
    found = []
    for k, (concept, values) in enumerate(concepts.items()):
        for v, value in enumerate(values):
            scores = auroc(image_activation, labels[:, k] == v)
            feature = int(scores.argmax())
            found.append(BestFeature(concept, value, feature, float(scores[feature])))
    return found


def mask_iou(activation_map: torch.Tensor, masks: torch.Tensor) -> float:
    """(N, h, w) one feature's activation on N images, (N, 1, H, W) bool object masks -> the IoU of
    where it fires (> 0, upsampled to the image) with the object, pooled over the N images."""
    if len(activation_map) == 0:
        return float("nan")
    size = masks.shape[-2:]
    fires = torch.nn.functional.interpolate(activation_map[:, None].float(), size=size, mode="nearest")[:, 0] > 0
    objects = masks[:, 0].bool()
    union = (fires | objects).sum()
    return float((fires & objects).sum() / union) if union > 0 else float("nan")


def match(directions: torch.Tensor, others: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, D) and (G, D) unit directions -> for each of the F features, the index of the most
    similar of the G and that cosine."""
    cosine = directions @ others.T
    best = cosine.max(dim=1)
    return best.indices, best.values
