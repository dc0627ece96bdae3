"""OnlineProbes: linear heads per (layer, timestep bucket, concept) trained on the detached
features of the training forward pass itself (no extra UNet forward), with their own optimizer.

All buckets and concepts of a layer are one ``nn.Linear`` (one matmul); the loss of all heads is
one cross-entropy. Accuracy per cell accumulates in a torchmetrics metric (summed across ranks)
and is logged every ``log_every_n_steps`` as ``probe_online/<concept>/<layer>/t0000-0099/acc``.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from typing_extensions import override

from diffprobe import diffusion, tb
from diffprobe.callbacks.periodic import adopt_unkeyed_state
from diffprobe.capture import check_layers, default_layers
from diffprobe.metrics import CellAccuracy
from diffprobe.probes import class_mask


def _key(layer: str) -> str:
    return layer.replace(".", "_")  # ModuleDict keys may not contain dots


class OnlineProbes(pl.Callback):
    """Linear heads per (layer, timestep bucket, concept), trained on the training step's own features.

    Args:
        layers: UNet module names (default: each down block, the mid block, each up block).
        pool: ``mean`` or ``grid2`` / ``grid4`` pooling of the block outputs.
        num_buckets: equal timestep buckets over [0, T), one head per bucket.
        learning_rate: Adam learning rate of the heads.
        log_every_n_steps: how often to log (and reset) the accumulated accuracy.
    """

    def __init__(
        self,
        layers: list[str] | None = None,
        pool: Literal["mean", "grid2", "grid4"] = "mean",
        num_buckets: int = 10,
        learning_rate: float = 1e-3,
        log_every_n_steps: int = 50,
    ):
        if num_buckets < 1 or log_every_n_steps < 1 or learning_rate <= 0:
            raise ValueError("num_buckets and log_every_n_steps must be >= 1 and learning_rate > 0")
        self.layers, self.pool, self.num_buckets = layers, pool, num_buckets
        self.learning_rate, self.log_every_n_steps = learning_rate, log_every_n_steps
        self._layers_arg = list(layers) if layers else None  # as given: part of the state key
        self.heads: nn.ModuleDict | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None
        self._logged_step: int | None = None  # the step last logged (once per optimizer step)

    @override
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self.layers = check_layers(pl_module.unet, self.layers or default_layers(pl_module.unet), who="OnlineProbes")
        self.concepts = dict(trainer.datamodule.concepts)
        if not self.concepts:
            raise ValueError("OnlineProbes needs concept labels; this data has none (set --data.concept_columns)")
        self.num_classes = [len(v) for v in self.concepts.values()]
        self.width = max(self.num_classes)
        self.class_mask = class_mask(self.num_classes)  # (K, C_max)
        self.bounds = diffusion.bucket_bounds(pl_module.num_train_timesteps, self.num_buckets)
        self.accuracy = CellAccuracy((len(self.layers), self.num_buckets, len(self.num_classes)))
        pl_module.request_features(self.layers, self.pool)

    def _build(self, features: dict[str, torch.Tensor], device: torch.device) -> None:
        outputs = self.num_buckets * len(self.num_classes) * self.width
        # Initialise the heads from a forked RNG: observing training must not change its random stream.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            self.heads = nn.ModuleDict({_key(n): nn.Linear(features[n].shape[1], outputs) for n in self.layers}).to(device)
        self.optimizer = torch.optim.Adam(self.heads.parameters(), lr=self.learning_rate)
        # Moved to the device once: a host-to-device copy every step would stall the GPU queue.
        self.class_mask = self.class_mask.to(device)
        self.accuracy.to(device)
        if self._pending_state is not None:  # resumed: continue the heads where they were
            self.heads.load_state_dict(self._pending_state["heads"])
            self.optimizer.load_state_dict(self._pending_state["optimizer"])
            self._pending_state = None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        features, t, labels = outputs["features"], outputs["t"], batch["labels"]
        if self.heads is None:
            self._build(features, labels.device)
        mask = self.class_mask
        bucket = diffusion.timestep_buckets(t, pl_module.num_train_timesteps, self.num_buckets)
        rows = torch.arange(labels.shape[0], device=labels.device)
        # 1. One matmul per layer gives every head's logits; keep each sample's own bucket.
        with torch.enable_grad():
            heads = torch.stack([self.heads[_key(n)](features[n].float()) for n in self.layers])  # (L, N, buckets * K * C_max)
            heads = rearrange(heads, "l n (b k c) -> l n b k c", b=self.num_buckets, k=len(self.num_classes))
            logits = heads[:, rows, bucket].masked_fill(~mask, float("-inf"))  # (L, N, K, C_max)
            # 2. One loss for all heads; the features are detached, so nothing reaches the UNet.
            targets = repeat(labels, "n k -> (l n k)", l=len(self.layers))
            loss = F.cross_entropy(rearrange(logits, "l n k c -> (l n k) c"), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.accuracy.update(logits.detach().argmax(-1) == labels.unsqueeze(0), bucket)
        # Once per optimizer step: with gradient accumulation this hook runs several times per step.
        if trainer.global_step % self.log_every_n_steps == 0 and trainer.global_step != self._logged_step:
            self._logged_step = trainer.global_step
            self._log(trainer)

    def _log(self, trainer: pl.Trainer) -> None:
        accuracy = self.accuracy.compute()  # (L, buckets, K), NaN where a bucket saw no sample
        self.accuracy.reset()
        values = {}
        for i, layer in enumerate(self.layers):
            for b, (first, last) in enumerate(self.bounds):
                for k, concept in enumerate(self.concepts):
                    if accuracy[i, b, k] == accuracy[i, b, k]:
                        tag = tb.probe_tag(tb.PROBE_PREFIX["online"], concept, layer, tb.bucket_tag(first, last))
                        values[tag] = float(accuracy[i, b, k])
        # Written once, at the step they were measured (every rank took part in compute()). Through
        # Lightning's log they would be re-written at every log_every_n_steps until they change.
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, trainer.global_step)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self._layers_arg, pool=self.pool, num_buckets=self.num_buckets)

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        adopt_unkeyed_state(checkpoint, type(self).__qualname__, self.state_key)

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.heads is None:
            return {}
        return {"heads": self.heads.state_dict(), "optimizer": self.optimizer.state_dict(), "layers": self.layers}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._pending_state = state_dict
            self.layers = state_dict.get("layers", self.layers)
