"""The observers' compiled UNet: a second compiled forward, apart from training's.

Training compiles in place (``DiffusionModule.configure_model``): the UNet, or the tapped forward
that also hands out OnlineProbes' features. Observers that read no hooks (SampleGrid's sampler,
PredictionEvolution's x0 predictions) call the UNet hundreds of times per evaluation at small
batches, where an eager diffusers UNet is bound by Python and kernel launches, not by the GPU.
:class:`ObservationUNet` gives them a compiled forward of their own: eval mode, no gradients,
their own batch sizes and, under ``reduce-overhead``, their own CUDA graphs. Its graphs sit next
to training's in dynamo's cache and never replace them (shapes are static: no automatic dynamic
shapes, which could otherwise turn a training graph symbolic after the first odd batch).
Its graphs are compiled on first use, on rank zero, at the first observation (step 0).

It stands in for the UNet wherever a UNet is called: ``unet(x, t, ...)`` returns an object with
``.sample``, and every attribute (``config``, ``device``, ``dtype``) is the UNet's own.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn


class ObservationUNet:
    """``ObservationUNet(unet, mode, backend)(x, t, encoder_hidden_states=None).sample``: the UNet's
    forward compiled for observation. The UNet's own ``forward`` is traced, so a UNet compiled in
    place for training is neither used nor disturbed."""

    def __init__(self, unet: nn.Module, mode: str | None = None, backend: Any = "inductor"):
        self.unet = unet
        self._forward = torch.compile(self._prediction, mode=mode, backend=backend, dynamic=False)

    def _prediction(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor | None) -> torch.Tensor:
        if encoder_hidden_states is None:
            return self.unet.forward(x, t).sample
        return self.unet.forward(x, t, encoder_hidden_states=encoder_hidden_states).sample

    @torch.no_grad()  # observation only: one grad mode, so no second graph for it either
    def __call__(self, x: torch.Tensor, t: torch.Tensor | int, encoder_hidden_states: torch.Tensor | None = None) -> SimpleNamespace:
        if not torch.is_tensor(t):  # a Python int would be specialised on: one graph per timestep
            t = torch.tensor(t, device=x.device)
        # Under CUDA graphs (reduce-overhead, max-autotune, the cudagraphs backend) the output lives
        # in memory the next replay reuses: copy it out (a few kilobytes). Each call is a new
        # compiled invocation with no backward pending, so torch starts a new CUDA-graph generation
        # by itself. Never torch.compiler.cudagraph_mark_step_begin() here: once called, torch
        # counts generations by it alone for the rest of the process, and the training graphs,
        # whose gradients are still alive when the next forward runs, would stop replaying.
        return SimpleNamespace(sample=self._forward(x, t, encoder_hidden_states).clone())

    def __getattr__(self, name: str) -> Any:  # config, device, dtype, ...: the UNet's
        if name == "unet":  # not set yet (during __init__ or unpickling)
            raise AttributeError(name)
        return getattr(self.unet, name)
