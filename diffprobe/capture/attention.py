"""Attention probabilities of a diffusers UNet, recorded at the attention-processor seam.

    with record_attention(unet, query_points=torch.tensor([[0.5, 0.5]])) as maps:
        unet(x_t, t)
    maps["mid_block.attentions.0"]  # list over calls of (B, P, K): head-mean probabilities

How it stays faithful and cheap:
- the module's ORIGINAL processor (SDPA by default) still computes the output, so the UNet's
  output is bit-identical with recording on and off;
- the probabilities come from diffusers' own classic ``AttnProcessor`` run beside it, whose
  ``attn.get_attention_scores`` call is intercepted: no attention body is copied here;
- only recorded layers pay for the second pass, and only inside the ``with`` block; on exit every
  module gets its original processor object back (also on exceptions);
- memory is bounded on the device: head-mean by default, and only the query positions asked for.

Gradient methods (token relevance) need the probabilities that actually produced the output, in
the autograd graph: ``differentiable=True`` lets the classic processor compute the output itself
and keeps its probabilities as :class:`TracedAttention` (same seam, no copied body; the output then
differs from SDPA's only by floating-point rounding).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor
from einops import rearrange
from torch import nn

from diffprobe.capture.layers import find_layers
from diffprobe.choices import AttentionKind

Kind = AttentionKind
_WHAT = {"self": "self-attention module", "cross": "cross-attention module", "all": "attention module"}


def attention_modules(
    unet: nn.Module, kind: Kind = "all", names: Sequence[str] | None = None, who: str | None = None
) -> dict[str, Attention]:
    """Every diffusers ``Attention`` module of the UNet by name (self-, cross- or all), or those
    called ``names`` (checked: a ValueError, prefixed with ``who``, lists the UNet's modules of
    that kind)."""
    found = {name: m for name, m in unet.named_modules() if isinstance(m, Attention)}
    if kind == "self":
        found = {n: m for n, m in found.items() if not m.is_cross_attention}
    elif kind == "cross":
        found = {n: m for n, m in found.items() if m.is_cross_attention}
    if names is None:
        return found
    return {name: found[name] for name in find_layers(unet, names, among=found, what=_WHAT[kind], who=who)}


def query_indices(points: torch.Tensor, num_queries: int) -> torch.Tensor:
    """Normalised (x, y) points in [0, 1) -> flat indices into a square grid of ``num_queries``."""
    side = int(round(num_queries**0.5))
    if side * side != num_queries:
        raise ValueError(f"cannot place query points on {num_queries} positions (not a square grid)")
    cells = (points.clamp(0, 1 - 1e-6) * side).long()
    return cells[:, 1] * side + cells[:, 0]


@dataclass
class TracedAttention:
    """Softmax probabilities of one attention call, still in the autograd graph.

    ``probs`` is the exact tensor the attention used, (batch * heads, Q, K), so
    ``torch.autograd.grad(out, traced.probs)`` works; :meth:`split` views it (batch, heads, Q, K)."""

    probs: torch.Tensor
    batch: int
    heads: int

    def split(self, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """(batch * heads, ...) -> (batch, heads, ...), e.g. ``probs`` or its gradient."""
        tensor = self.probs if tensor is None else tensor
        return rearrange(tensor, "(b h) ... -> b h ...", b=self.batch, h=self.heads)


class _RecordingProcessor:
    """Output from the original processor; probabilities from diffusers' classic one."""

    def __init__(self, original, store: list, keep_heads: bool, query_points: torch.Tensor | None, differentiable: bool = False):
        self.original, self.store, self.keep_heads, self.query_points = original, store, keep_heads, query_points
        self.differentiable = differentiable
        self.classic = AttnProcessor()

    def _traced_call(self, attn: Attention, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs):
        scores = attn.get_attention_scores

        def keeping_scores(query, key, mask=None):
            probs = scores(query, key, mask)
            self.store.append(TracedAttention(probs, hidden_states.shape[0], attn.heads))
            return probs

        vars(attn)["get_attention_scores"] = keeping_scores  # shadows the class method (mypy: no assigning to a method)
        try:
            return self.classic(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        finally:
            del attn.get_attention_scores

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if self.differentiable:
            return self._traced_call(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        output = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        batch = hidden_states.shape[0]
        scores = attn.get_attention_scores

        def recording_scores(query, key, mask=None):
            probs = scores(query, key, mask)
            kept = rearrange(probs.detach().float(), "(b h) q k -> b h q k", b=batch, h=attn.heads)
            if self.query_points is not None:
                kept = kept[:, :, query_indices(self.query_points, kept.shape[2]).to(kept.device)]
            self.store.append(kept if self.keep_heads else kept.mean(1))
            return probs

        # The side pass must not move the random stream (dropout) or build a graph.
        devices = [hidden_states.device] if hidden_states.device.type == "cuda" else []
        vars(attn)["get_attention_scores"] = recording_scores  # shadows the class method, as above
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                self.classic(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        finally:
            del attn.get_attention_scores  # back to the class method
        return output


@overload
def record_attention(
    unet: nn.Module,
    layers: Sequence[str] | None = None,
    *,
    kind: Kind = "all",
    keep_heads: bool = False,
    query_points: torch.Tensor | None = None,
    differentiable: Literal[False] = False,
) -> AbstractContextManager[dict[str, list[torch.Tensor]]]: ...


@overload
def record_attention(
    unet: nn.Module,
    layers: Sequence[str] | None = None,
    *,
    kind: Kind = "all",
    keep_heads: bool = False,
    query_points: torch.Tensor | None = None,
    differentiable: Literal[True],
) -> AbstractContextManager[dict[str, list[TracedAttention]]]: ...


@contextmanager
def record_attention(
    unet: nn.Module,
    layers: Sequence[str] | None = None,
    *,
    kind: Kind = "all",
    keep_heads: bool = False,
    query_points: torch.Tensor | None = None,
    differentiable: bool = False,
) -> Iterator[dict[str, list[Any]]]:  # tensors, or TracedAttention when differentiable (the overloads say which)
    """Record attention probabilities of ``layers`` (default: every Attention of ``kind``).

    Yields name -> list (one entry per call) of float32 tensors (B, [heads,] Q or P, K): softmax
    probabilities over keys, head-mean unless ``keep_heads``, only at ``query_points`` (P, 2)
    normalised (x, y) image coordinates when given. ``differentiable=True``: the entries are
    :class:`TracedAttention` (all heads, all queries, in the graph) for gradient methods.
    """
    if differentiable and (keep_heads or query_points is not None):
        raise ValueError("differentiable recording keeps every head and query; leave keep_heads and query_points unset")
    targets = attention_modules(unet, kind, layers)
    if query_points is not None:
        query_points = torch.as_tensor(query_points, dtype=torch.float32)
        if query_points.ndim != 2 or query_points.shape[1] != 2:
            raise ValueError(f"query_points must be (P, 2) normalised (x, y); got shape {tuple(query_points.shape)}")
        if (query_points < 0).any() or (query_points >= 1).any():
            raise ValueError(f"query points {query_points.tolist()} lie outside the image: coordinates must be in [0, 1)")
    records: dict[str, list[torch.Tensor]] = {name: [] for name in targets}
    originals = {name: module.processor for name, module in targets.items()}
    try:
        for name, module in targets.items():
            # diffusers annotates set_processor's argument as its AttnProcessor class, but takes any processor
            # (its own default, AttnProcessor2_0, is none either).
            module.set_processor(_RecordingProcessor(originals[name], records[name], keep_heads, query_points, differentiable))  # type: ignore[arg-type]
        yield records
    finally:
        for name, module in targets.items():
            module.set_processor(originals[name])
