"""One interface over every model the explanation tools run on.

``ExplainModel`` wraps a diffusers UNet with what the tools need around it: the noise schedule,
how a prompt becomes ``encoder_hidden_states`` (and which positions are real words), how x_t is
shown as an image (identity in pixel space, the VAE for Stable Diffusion), and, for token
relevance, the text encoder's attention when there is one. The same tool code then runs on

- an unconditional ``UNet2DModel`` (no prompt),
- a concept-conditional ``UNet2DConditionModel`` with diffprobe's learned ``CaptionEncoder``,
- a Stable Diffusion pipeline (latent x_t, CLIP text encoder): ``explain.stable_diffusion``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler
from torch import nn

from diffprobe.diffusion.captions import PAD, CaptionEncoder
from diffprobe.diffusion.model import DiffusionModel
from diffprobe.diffusion.sampling import guided_output


@dataclass
class Prompt:
    """An encoded prompt. ``condition`` / ``uncondition``: (1, L, D) encoder hidden states;
    ``tokens``: the L token strings; ``words``: positions of real words (special tokens and
    padding dropped), the tokens relevance is reported for."""

    text: str
    condition: torch.Tensor
    uncondition: torch.Tensor
    tokens: list[str]
    words: list[int]

    @property
    def word_tokens(self) -> list[str]:
        return [self.tokens[i] for i in self.words]


@dataclass
class TracedText:
    """A prompt encoded with gradients on: ``condition`` (1, L, D) in the autograd graph and the text
    encoder's attention probabilities per layer, each (1, heads, L, L) with ``retain_grad`` set."""

    condition: torch.Tensor
    attentions: list[torch.Tensor]


@dataclass
class ExplainModel:
    """A UNet plus what the explanation tools need around it (see the module docstring)."""

    unet: nn.Module
    scheduler_config: dict
    guidance_scale: float = 1.0
    encode_prompt_fn: Callable[[str], Prompt] | None = None
    decode_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    trace_text_fn: Callable[[str], TracedText] | None = None
    kind: str = "unconditional"
    extras: dict = field(default_factory=dict)

    @property
    def conditional(self) -> bool:
        return self.encode_prompt_fn is not None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def prompt(self, text: str | None) -> Prompt | None:
        """Encode ``text``; a clear error when a prompt is missing or not wanted."""
        if text is not None and not self.conditional:
            raise ValueError(f"this {self.kind} model takes no prompt, but got {text!r}; leave out --prompt")
        if text is None and self.conditional:
            raise ValueError(f"this {self.kind} model needs a prompt: give --prompt 'a large red solid circle ...'")
        if text is None or self.encode_prompt_fn is None:  # (a prompt for a model without an encoder was refused above)
            return None
        with torch.no_grad():
            return self.encode_prompt_fn(text)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space (B, C, h, w) -> images (B, 3 or 1, H, W) in [-1, 1] for display."""
        if self.decode_fn is None:
            return x.float().clamp(-1, 1)
        with torch.no_grad():
            return self.decode_fn(x).float().clamp(-1, 1)

    def ddim(self) -> DDIMScheduler:
        """A fresh deterministic (eta = 0) DDIM scheduler on the model's noise schedule."""
        return DDIMScheduler.from_config(self.scheduler_config)

    def guided(self, x: torch.Tensor, t: torch.Tensor | int, prompt: Prompt | None, condition: torch.Tensor | None = None) -> torch.Tensor:
        """UNet output for a batch x (B, C, h, w) at one t, classifier-free guided when conditional
        (:func:`diffprobe.diffusion.sampling.guided_output`). ``condition`` overrides the prompt's (e.g. a
        traced condition that carries gradients)."""
        if prompt is None:
            return guided_output(self.unet, x, t)
        batch = x.shape[0]
        cond = (prompt.condition if condition is None else condition).expand(batch, -1, -1)
        uncond = prompt.uncondition.expand(batch, -1, -1)
        return guided_output(self.unet, x, t, cond, uncond, self.guidance_scale)


def caption_prompt_encoder(encoder: CaptionEncoder) -> Callable[[str], Prompt]:
    """Prompts for diffprobe's learned-token conditional models: one token per word, no specials."""

    def encode(text: str) -> Prompt:
        encoder.tokenizer.check_words([text])  # an <unk> token would explain nothing the model learned
        ids = encoder.tokenizer.encode([text])
        tokens = [encoder.tokenizer.words[i] for i in ids[0].tolist()]
        condition = encoder(ids.to(encoder.position_embedding.device))
        return Prompt(
            text=text,
            condition=condition,
            uncondition=encoder.unconditional(1),
            tokens=tokens,
            words=[i for i, token in enumerate(tokens) if token != PAD],
        )

    return encode


def from_parts(
    unet: nn.Module, scheduler_config: dict, caption_encoder: CaptionEncoder | None = None, guidance_scale: float = 1.0
) -> ExplainModel:
    """An ExplainModel for a diffprobe UNet (and its caption encoder when conditional).

    The modules are used as they are, not changed: put them in ``eval()`` mode first (dropout).
    The tools never write parameters' ``.grad`` (they take gradients with ``torch.autograd.grad``)."""
    if caption_encoder is None:
        return ExplainModel(unet=unet, scheduler_config=scheduler_config, kind="unconditional")
    return ExplainModel(
        unet=unet,
        scheduler_config=scheduler_config,
        guidance_scale=guidance_scale,
        encode_prompt_fn=caption_prompt_encoder(caption_encoder),
        kind="conditional",
        extras={"caption_encoder": caption_encoder},
    )


def from_model(model: DiffusionModel, guidance_scale: float | None = None) -> ExplainModel:
    """An ExplainModel for a :class:`DiffusionModel` (its own guidance weight unless given)."""
    scale = model.guidance_scale if guidance_scale is None else guidance_scale
    return from_parts(model.unet, dict(model.scheduler.config), model.caption_encoder, scale)
