"""What the reader says of the held-out prompts' images: is the combination made?"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffprobe.hidden.prompts import HeldoutPrompts
from diffprobe.probes.stats import wilson_interval


@dataclass(frozen=True)
class VariantScore:
    """One variant at one checkpoint. ``combination``: the share of images showing every held-out
    value at once (95% Wilson interval); ``concepts``: each held-out concept's share;
    ``probability``: the reader's mean probability of each held-out value (the concept-space
    coordinates); ``others_kept``: the share of the other concepts read as their caption says."""

    combination: float
    ci_low: float
    ci_high: float
    n: int
    concepts: dict[str, float]
    probability: dict[str, float]
    others_kept: float

    def record(self) -> dict:
        return {
            "combination": self.combination, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n, "concepts": self.concepts,
            "probability": self.probability, "others_kept": self.others_kept,
        }  # fmt: skip


@torch.no_grad()
def reader_probabilities(reader, images: torch.Tensor, batch_size: int = 512) -> list[torch.Tensor]:
    """Per concept (reader order), the reader's probabilities (N, values) of ``images``."""
    reader.eval()
    device = next(reader.parameters()).device
    parts: list[list[torch.Tensor]] = [[] for _ in reader.concepts]
    for start in range(0, len(images), batch_size):
        logits = reader(images[start : start + batch_size].to(device).float())
        for k, concept in enumerate(reader.concepts):
            parts[k].append(logits[concept].softmax(-1).cpu())
    return [torch.cat(p) for p in parts]


def score_variant(reader, images: torch.Tensor, prompts: HeldoutPrompts) -> VariantScore:
    """Score one variant's images (N, C, H, W) against the prompts' labels."""
    probabilities = reader_probabilities(reader, images)
    readings = torch.stack([p.argmax(-1) for p in probabilities], dim=1)
    hits = readings == prompts.labels
    held = prompts.concept_indices
    made = hits[:, held].all(dim=1)
    n = len(images)
    low, high = wilson_interval(made.sum().view(1), n)
    names = list(reader.concepts)
    others = [k for k in range(len(names)) if k not in held]
    return VariantScore(
        combination=float(made.float().mean()),
        ci_low=float(low[0]),
        ci_high=float(high[0]),
        n=n,
        concepts={names[k]: float(hits[:, k].float().mean()) for k in held},
        probability={names[k]: float(probabilities[k][:, int(prompts.labels[0, k])].mean()) for k in held},
        others_kept=float(hits[:, others].float().mean()) if others else float("nan"),
    )
