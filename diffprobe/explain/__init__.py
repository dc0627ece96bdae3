"""Explanation tools of Park, Ju & Lee (ESWA 2024) on any diffusers UNet (no Lightning here).

Each tool explains one step of a seeded sampling run (:func:`explain_step`) of an
:class:`ExplainModel` (a diffprobe model via :func:`from_model`, or Stable Diffusion via
``explain.stable_diffusion.load_stable_diffusion``).
"""

from diffprobe.explain.auc import causal_curve, normalised_auc, random_saliency
from diffprobe.explain.cam import df_cam
from diffprobe.explain.correlation import parse_triple, probe_accuracy_correlations, role_totals, spearman
from diffprobe.explain.lime import lime_saliency
from diffprobe.explain.model import ExplainModel, Prompt, from_model, from_parts
from diffprobe.explain.relevance import relevance_over_run, token_relevance
from diffprobe.explain.rise import df_rise
from diffprobe.explain.run import ExplainedStep, explain_step, explain_steps, predict_prev
from diffprobe.explain.schedules import compare_schedules

__all__ = [
    "ExplainModel",
    "ExplainedStep",
    "Prompt",
    "causal_curve",
    "compare_schedules",
    "df_cam",
    "df_rise",
    "explain_step",
    "explain_steps",
    "from_model",
    "from_parts",
    "lime_saliency",
    "parse_triple",
    "probe_accuracy_correlations",
    "role_totals",
    "spearman",
    "normalised_auc",
    "predict_prev",
    "random_saliency",
    "relevance_over_run",
    "token_relevance",
]
