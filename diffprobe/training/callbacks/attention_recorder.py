"""AttentionRecorder: where the UNet's attention goes at each timestep, on fixed inputs, over training.

Every N steps, for a few fixed images noised to each t of a grid (fixed noise):
- ``attention/<layer>/t<tttt>`` (images): per image, the self-attention map of a query at the
  object's centre and of one on the background (known from ConceptShapes' masks; the image centre
  and a corner otherwise), overlaid on the image;
- ``attention_entropy/<layer>/t<tttt>``, ``attention_distance/<layer>/t<tttt>`` (how local attention
  is, in image widths) and ``attention_object_mass/<layer>/t<tttt>`` (the share of the object
  query's attention that falls on the object mask);
- conditional models: ``cross_attention/<k>_<word>/t<tttt>`` (the first image's cross-attention
  map of each caption token, averaged over cross-attention layers) and ``cross_attention_mass/...``
  (each token's share of the first image's attention, over all its queries), plus one curve figure.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import lightning.pytorch as pl
import torch
from einops import rearrange
from typing_extensions import override

from diffprobe import interrupt
from diffprobe.capture import attention_modules, eager, eval_mode, query_indices, record_attention
from diffprobe.choices import Weights
from diffprobe.data.probe_set import fixed_examples
from diffprobe.diffusion.timesteps import check_timesteps, scaled_timesteps
from diffprobe.report import tb, viz
from diffprobe.training.callbacks.periodic import TimestepGridObserver

DEFAULT_T_1000 = (50, 200, 500, 800)


def query_points_from_masks(masks: torch.Tensor | None, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (x, y) of each image's object centre and of a background point (the corner
    farthest from the object). (N, 2) each. Without masks: image centre and top-left corner."""
    if masks is None:
        return torch.full((count, 2), 0.5), torch.full((count, 2), 0.05)
    size = masks.shape[-1]
    objects, backgrounds = [], []
    corners = torch.tensor([[0.05, 0.05], [0.95, 0.05], [0.05, 0.95], [0.95, 0.95]])
    for mask in masks[:count, 0]:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        centre = torch.stack([xs.float().mean() + 0.5, ys.float().mean() + 0.5]) / size
        objects.append(centre)
        backgrounds.append(corners[(corners - centre).norm(dim=1).argmax()])
    return torch.stack(objects), torch.stack(backgrounds)


def attention_statistics(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention (N, Q, K) over a square grid -> mean entropy (nats) and mean attention
    distance (in image widths) over all queries and images."""
    side = int(round(probs.shape[-1] ** 0.5))
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
    coords = (
        rearrange(torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1), "h w xy -> (h w) xy").float()
        / side
    )
    distance = torch.cdist(coords, coords).to(probs.device)  # (Q, K)
    return entropy, (probs * distance).sum(-1).mean()


class AttentionRecorder(TimestepGridObserver):
    """Args:
    every_n_steps: record after every this many optimizer steps (and at the start and end).
    num_images: fixed images recorded (rows of each grid).
    timesteps: t grid (default 50, 200, 500, 800 scaled to T).
    layers: self-attention module names (default: all of them).
    weights: record with the ``ema`` or the ``raw`` weights.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_images: int = 4,
        timesteps: list[int] | None = None,
        layers: list[str] | None = None,
        weights: Weights = "ema",
    ):
        super().__init__(every_n_steps)
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
        self.num_images, self.timesteps, self.layers, self.weights = num_images, timesteps, layers, weights
        self.images: torch.Tensor | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit" or self.images is not None:
            return
        self.layers = list(attention_modules(pl_module.unet, "self", self.layers or None, who="AttentionRecorder"))
        self.cross_layers = list(attention_modules(pl_module.unet, "cross"))
        T = pl_module.num_train_timesteps
        self.timesteps = self.timesteps or scaled_timesteps(DEFAULT_T_1000, T)
        check_timesteps(self.timesteps, T, "AttentionRecorder")
        heldout = trainer.datamodule.heldout_dataset()  # type: ignore[attr-defined]  # Lightning sets Trainer.datamodule without declaring it
        examples = fixed_examples(trainer.log_dir or trainer.default_root_dir, heldout, self.num_images)
        self.images, self.masks, self.captions = examples.images, examples.masks, examples.captions
        self.object_points, self.background_points = query_points_from_masks(self.masks, len(self.images))

    def _ready(self) -> tuple[torch.Tensor, list[int], list[str]]:
        """The fixed images (N, C, H, W), the t grid and the self-attention layers, which setup chose."""
        if self.images is None or self.timesteps is None or self.layers is None:
            raise RuntimeError("AttentionRecorder records only after its setup for fit chose the images, timesteps and layers")
        return self.images, self.timesteps, self.layers

    @torch.no_grad()
    def maps(self, pl_module, t_index: int, precision: Callable[[], AbstractContextManager] = nullcontext, inputs=None) -> dict[str, torch.Tensor]:
        """Head-mean attention (N, Q, K) float32 of every recorded layer at ``timesteps[t_index]``;
        the UNet runs in ``precision``; ``inputs``: :meth:`_inputs`, made once for all t."""
        _, timesteps, layers = self._ready()
        x0, noise, context = inputs if inputs is not None else self._inputs(pl_module)
        unet = pl_module.unet
        t = torch.full((len(x0),), timesteps[t_index], device=x0.device, dtype=torch.long)
        x_t = pl_module.scheduler.add_noise(x0, noise[t_index], t)
        with record_attention(unet, layers + self.cross_layers) as recorded, precision():
            if context is None:
                unet(x_t, t)
            else:
                unet(x_t, t, encoder_hidden_states=context)
        return {name: calls[-1] for name, calls in recorded.items()}

    def _inputs(self, pl_module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """On the module's device, in one copy each: the images, the fixed noise of every t (T, N,
        C, H, W) and the captions' context (None for an unconditional model)."""
        images, timesteps, _ = self._ready()
        noise = torch.stack([torch.randn(images.shape, generator=torch.Generator().manual_seed(4321 + j)) for j in range(len(timesteps))])
        context = pl_module.encode_captions(self.captions) if pl_module.caption_encoder is not None else None
        return images.to(pl_module.device), noise.to(pl_module.device), context

    @override
    def observe(self, trainer, pl_module, step: int) -> None:
        writer = self.writer(trainer)
        images, timesteps, layers = self._ready()
        scalars: dict[str, float] = {}
        token_mass: dict[str, list[float]] = {}
        queried: dict[str, dict[str, torch.Tensor]] = {layer: {} for layer in layers}  # layer -> row label -> (N, h, w)
        with eval_mode(pl_module), eager(pl_module.unet), pl_module.ema_weights() if self.weights == "ema" else nullcontext():
            inputs, on_device = self._inputs(pl_module), []
            for j in range(len(timesteps)):  # every forward queued before the host reads any map
                interrupt.check()
                on_device.append(self.maps(pl_module, j, self.unet_precision(trainer), inputs))
            for t, maps in zip(timesteps, on_device):
                for layer in layers:
                    statistics, obj, bg = self._self_attention(layer, maps[layer].cpu(), t)
                    scalars |= statistics
                    queried[layer] |= {f"object query (+), t = {t}": obj, f"background query (x), t = {t}": bg}
                if self.cross_layers:
                    scalars |= self._log_cross_attention(writer, pl_module, [maps[n].cpu() for n in self.cross_layers], t, step, token_mass)
        tb.log_scalars(writer, scalars, step)
        for layer, rows in queried.items():  # one figure per layer: how its attention changes with t
            title = f"self-attention of {layer} by timestep (training step {step})"
            figure = viz.attention_grid(images, rows, self.object_points, self.background_points, title)
            writer.add_figure(tb.attention_map_tag(layer), figure, step)
        if token_mass:
            writer.add_figure(
                tb.CROSS_ATTENTION_CURVES, viz.metric_curves(token_mass, timesteps, f"token attention mass by t (step {step})"), step
            )

    def _self_attention(self, layer: str, probs: torch.Tensor, t: int) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """Self-attention probs (N, Q, K) at t -> its scalars by tag, and where the object query and
        the background query attend, (N, h, w) each."""
        side = int(round(probs.shape[-1] ** 0.5))
        obj = probs[torch.arange(len(probs)), [int(query_indices(p[None], probs.shape[1])) for p in self.object_points]]  # (N, K)
        bg = probs[torch.arange(len(probs)), [int(query_indices(p[None], probs.shape[1])) for p in self.background_points]]
        entropy, distance = attention_statistics(probs)
        scalars = {
            tb.attention_statistic_tag("entropy", layer, t): float(entropy),
            tb.attention_statistic_tag("distance", layer, t): float(distance),
        }
        if self.masks is not None:
            small = torch.nn.functional.adaptive_avg_pool2d(self.masks.float(), side).flatten(1)  # (N, K) share of each key on the object
            scalars[tb.attention_statistic_tag("object_mass", layer, t)] = float((obj * small).sum(-1).mean())
        obj, bg = (rearrange(keys, "n (h w) -> n h w", h=side) for keys in (obj, bg))
        return scalars, obj, bg

    def _log_cross_attention(self, writer, pl_module, probs: list[torch.Tensor], t: int, step: int, token_mass: dict) -> dict[str, float]:
        """Logs each token's cross-attention map at t (probs: per layer (N, Q, tokens)); returns its scalars by tag."""
        words = pl_module.caption_encoder.tokenizer.decode(pl_module.caption_encoder.tokenizer.encode(self.captions[:1]))[0]
        side = max(int(round(p.shape[1] ** 0.5)) for p in probs)
        # DAAM-style aggregation: every layer's (Q, tokens) map upsampled to one grid and averaged.
        upsampled = []
        for p in probs:
            grid = rearrange(p, "n (h w) k -> n k h w", h=int(round(p.shape[1] ** 0.5)))
            upsampled.append(torch.nn.functional.interpolate(grid, size=side, mode="bilinear", align_corners=False))
        mean_map = torch.stack(upsampled).mean(0)  # (N, tokens, side, side)
        mass = torch.stack([p[0].mean(0) for p in probs]).mean(0)  # (tokens,) of image 0, whose words name them
        scalars = {}
        for k, word in enumerate(words):
            name = tb.token_name(k, word)
            writer.add_image(
                tb.cross_attention_tag(name, t), viz.image_grid(viz.heat_overlay(self._ready()[0][0], mean_map[0, k])[None], columns=1), step
            )
            scalars[tb.cross_attention_mass_tag(name, t)] = float(mass[k])
            token_mass.setdefault(name, []).append(float(mass[k]))
        return scalars
