"""The choices of the core's settings, as ``Literal`` types: one definition each, in a module that
imports nothing, so command signatures (and ``probe.py --help``) use them without loading torch.
The core modules re-export the ones they take (``explain.similarity.Similarity`` ...)."""

from typing import Literal

Similarity = Literal["structure", "contrast", "luminance", "ssim", "cosine"]  # per-position score of DF-RISE
Response = Literal["mean", "similarity"]  # LIME's response
Score = Literal["mse", "ssim", "cosine"]  # insertion / deletion score against the true x_{t-1}
Saliency = Literal["rise", "cam", "lime", "random"]  # the methods insertion / deletion compares
Schedule = Literal["uniform", "early", "latter", "window"]  # timestep schedules (paper: exponential early / latter)
Pool = Literal["mean", "grid2", "grid4"]  # how a block's feature map becomes a probe's input
Method = Literal["logistic", "ridge"]  # linear probe fitting
Sampler = Literal["ddpm", "ddim"]
