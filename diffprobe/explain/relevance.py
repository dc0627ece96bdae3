"""Token relevance per denoising step: gradient-weighted attention relevance (Chefer, Gur & Wolf,
ICCV 2021, rules for bi-modal transformers) through the UNet's self- and cross-attention.

At one step: the attention probabilities A of every UNet attention (and of the text encoder's
layers when there is one) and their gradients G of ``eps.sum()``; A_bar = mean over heads of
clamp(G * A, min=0), taken on the conditional half of a CFG batch.
- text side: R_qq = I, R_qq += A_bar R_qq per text-encoder layer (identity for learned tokens);
- image side, per transformer (one chain per resolution, reset at each): R_ii = I, R_iq = 0;
  self-attention: R_ii += A_bar R_ii, R_iq += A_bar R_iq;
  cross-attention: R_iq += R_ii_bar^T A_bar R_qq_bar (bars: Chefer's row-normalised residual form).
Token relevance = sum over image positions of R_iq, summed over transformers, special tokens and
padding dropped, min-max normalised over the prompt's words: one score per word per step.
The attention is captured at the recorders' seam (``capture.record_attention(differentiable=True)``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import torch

from diffprobe.capture.attention import TracedAttention, attention_modules, record_attention
from diffprobe.diffusion import sampling
from diffprobe.explain.model import ExplainModel, Prompt

_BLOCK = re.compile(r"^(?P<chain>.+?)(?:\.transformer_blocks\.(?P<index>\d+))?\.(?P<attn>attn\d+)$")


@dataclass
class TokenRelevance:
    """scores (W,): min-max normalised relevance of the prompt's W words; raw (L,): before dropping
    special tokens and normalising; words: the W word tokens."""

    scores: torch.Tensor
    raw: torch.Tensor
    words: list[str]


def _aggregated(traced: TracedAttention, grad: torch.Tensor | None) -> torch.Tensor:
    """A_bar (Q, K) of the conditional (last) sample of the batch: mean_h clamp(G * A, 0)."""
    probs = traced.split(traced.probs.detach())[-1].float()
    if grad is None:  # the attention did not reach eps (e.g. an unused layer): no relevance
        return torch.zeros_like(probs[0])
    return (traced.split(grad)[-1].float() * probs).clamp_min(0).mean(0)


def _normalised(relevance: torch.Tensor) -> torch.Tensor:
    """Chefer et al. eq. 8-9: rows of R - I scaled to sum to 1, then + I."""
    eye = torch.eye(relevance.shape[0], device=relevance.device)
    residual = relevance - eye
    return residual / residual.sum(-1, keepdim=True).clamp_min(1e-12) + eye


def text_relevance(attentions: list[torch.Tensor], gradients: list[torch.Tensor | None]) -> torch.Tensor:
    """R_qq (L, L) through the text encoder's layers; attentions (1, heads, L, L) each."""
    if all(grad is None for grad in gradients):
        # Silently falling back to the identity would hide a broken text-encoder trace.
        raise RuntimeError("no gradient reached the text encoder's attention: the traced condition is not connected to the UNet's output")
    length = attentions[0].shape[-1]
    relevance = torch.eye(length, device=attentions[0].device)
    for probs, grad in zip(attentions, gradients):
        if grad is None:
            continue
        a_bar = (grad[-1].float() * probs.detach()[-1].float()).clamp_min(0).mean(0)
        relevance = relevance + a_bar @ relevance
    return relevance


def chain_relevance(a_bars: list[tuple[bool, torch.Tensor]], r_qq_bar: torch.Tensor) -> torch.Tensor:
    """R_iq (Q, L) of one chain of attentions at one resolution, in run order.

    ``a_bars``: (is_cross, A_bar) pairs, A_bar (Q, Q) for self-attention and (Q, L) for cross;
    ``r_qq_bar`` (L, L): the normalised text relevance. R_ii starts at I and R_iq at 0."""
    queries = a_bars[0][1].shape[0]
    r_ii = torch.eye(queries, device=r_qq_bar.device)
    r_iq = torch.zeros(queries, r_qq_bar.shape[0], device=r_qq_bar.device)
    fresh = True  # R_ii is still I: I + A_bar I is I + A_bar, without a (Q, Q) x (Q, Q) product
    for is_cross, a_bar in a_bars:
        if is_cross:
            r_iq = r_iq + _normalised(r_ii).T @ a_bar @ r_qq_bar
        else:
            r_iq = r_iq + a_bar @ r_iq
            r_ii = r_ii + a_bar if fresh else r_ii + a_bar @ r_ii
            fresh = False
    return r_iq


def _chains(unet) -> dict[str, list[tuple[int, str]]]:
    """Attention modules grouped into chains of one resolution (one transformer), in run order."""
    chains: dict[str, list[tuple[int, int, str]]] = defaultdict(list)  # (block index, attn number, name), sorted below
    for name in attention_modules(unet):
        match = _BLOCK.match(name)
        chain, index, attn = (match["chain"], int(match["index"] or 0), match["attn"]) if match else (name, 0, "attn1")
        chains[chain].append((index, int(attn[4:]), name))
    return {chain: [(i, n) for i, _, n in sorted(items)] for chain, items in chains.items()}


def token_relevance(model: ExplainModel, x_t: torch.Tensor, t: int, prompt: Prompt | None) -> TokenRelevance:
    """Relevance of each word of ``prompt`` for the UNet's prediction at (x_t (1, C, h, w), t)."""
    if prompt is None:
        raise ValueError("token relevance needs a conditional model and a prompt; this model is unconditional")
    modules = attention_modules(model.unet)
    if not any(m.is_cross_attention for m in modules.values()):
        raise ValueError("this UNet has no cross-attention, so no token can be relevant; use a conditional model")
    with torch.enable_grad():
        traced_text = model.trace_text_fn(prompt.text) if model.trace_text_fn is not None else None
        condition = traced_text.condition if traced_text is not None else None
        with record_attention(model.unet, differentiable=True) as records:
            # x_t requires grad so a graph exists through the frozen UNet.
            eps = model.guided(x_t.detach().clone().requires_grad_(True), t, prompt, condition=condition)
        unet_traced = {name: calls[-1] for name, calls in records.items() if calls}
        text_attentions = traced_text.attentions if traced_text is not None else []
        tensors = [traced.probs for traced in unet_traced.values()] + list(text_attentions)
        gradients = torch.autograd.grad(eps.float().sum(), tensors, allow_unused=True)
    unet_grads = dict(zip(unet_traced, gradients[: len(unet_traced)]))
    length, device = prompt.condition.shape[1], model.device
    r_qq = text_relevance(text_attentions, list(gradients[len(unet_traced) :])) if text_attentions else torch.eye(length, device=device)
    r_qq_bar = _normalised(r_qq.to(device))
    raw = torch.zeros(length, device=device)
    for chain in _chains(model.unet).values():
        a_bars = [(modules[name].is_cross_attention, _aggregated(unet_traced[name], unet_grads[name])) for _, name in chain]
        raw += chain_relevance(a_bars, r_qq_bar).sum(0)
    raw = raw.cpu()
    words = raw[prompt.words]
    scores = (words - words.min()) / (words.max() - words.min()).clamp_min(1e-12)
    return TokenRelevance(scores=scores, raw=raw, words=prompt.word_tokens)


@dataclass
class RelevanceRun:
    """Per-step relevance of one sampling run: scores (steps, W) at ``timesteps``; ``final`` the
    run's last x (1, C, h, w), model space."""

    timesteps: list[int]
    scores: torch.Tensor
    words: list[str]
    final: torch.Tensor

    def totals(self) -> torch.Tensor:
        """Per-word sums over the run's steps (W,)."""
        return self.scores.sum(0)


def relevance_over_run(model: ExplainModel, prompt: Prompt, *, seed: int = 0, timesteps: list[int]) -> RelevanceRun:
    """Token relevance at every step of a seeded run on ``timesteps`` (a DDPMScheduler takes any
    schedule: uniform, early, latter, window)."""
    from diffusers import DDPMScheduler

    generator = torch.Generator(device=model.device).manual_seed(seed)
    rows, seen, last = [], [], None
    for record in sampling.denoise(
        model.unet,
        DDPMScheduler.from_config(model.scheduler_config),
        batch_size=1,
        generator=generator,
        timesteps=timesteps,
        condition=prompt.condition,
        uncondition=prompt.uncondition,
        guidance_scale=model.guidance_scale,
    ):
        rows.append(token_relevance(model, record.x_t, record.t, prompt).scores)
        seen.append(record.t)
        last = record.x_prev
    if last is None:
        raise ValueError("token relevance over a run needs at least one timestep; timesteps is empty")
    return RelevanceRun(timesteps=seen, scores=torch.stack(rows), words=prompt.word_tokens, final=last)
