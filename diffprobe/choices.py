"""Every choice a setting can take, as a ``Literal`` type: one definition each, in a module that
imports nothing heavy, so command signatures (and ``probe.py --help``) use them without loading
torch. Modules import their choices from here; none spells a choice list of its own."""

from typing import Literal

# The model and its training
PredictionType = Literal["epsilon", "v_prediction", "sample"]  # what the UNet predicts
BetaSchedule = Literal["linear", "cosine", "scaled_linear"]  # the DDPM noise schedule
LrSchedule = Literal["cosine", "constant"]  # after the linear warm-up
Sampler = Literal["ddpm", "ddim"]
Weights = Literal["ema", "raw"]  # which of a checkpoint's two sets of weights
WeightsOrBoth = Literal["ema", "raw", "both"]  # what a live observer looks at
DType = Literal["float32", "float16", "bfloat16"]  # Stable Diffusion's weights (diffprobe models stay float32)
Device = str  # "auto" (cuda when there is one, else cpu), "cpu", "cuda", "cuda:1", ...
Split = Literal["train", "test"]

# Probes
Pool = Literal["mean", "grid2", "grid4"]  # how a block's feature map becomes a probe's input
Method = Literal["logistic", "ridge"]  # linear probe fitting
HeatmapView = Literal["concept", "layer"]  # probe heatmaps: layer x t per concept, or concept x t per layer

# Explanations (Park, Ju & Lee 2024)
Similarity = Literal["structure", "contrast", "luminance", "ssim", "cosine"]  # per-position score of DF-RISE
Response = Literal["mean", "similarity"]  # LIME's response
Score = Literal["mse", "ssim", "cosine"]  # insertion / deletion score against the true x_{t-1}
Saliency = Literal["rise", "cam", "lime", "random"]  # the methods insertion / deletion compares
CausalMode = Literal["insertion", "deletion"]
Schedule = Literal["uniform", "early", "latter", "window"]  # timestep schedules (paper: exponential early / latter)
SamplingSchedule = Literal["uniform", "early", "latter"]  # what an intervention's sampler visits
AttentionKind = Literal["self", "cross", "all"]
ProbeMetric = Literal["accuracy", "selectivity", "control_accuracy"]  # what correlation ranks against t

# Interventions
InterventionMode = Literal["switch", "steer"]
