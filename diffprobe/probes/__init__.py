"""Linear concept probes: batched fitting, controls and significance, and the probe pipeline."""

from diffprobe.probes.fit import ProbeFit, class_mask, fit_probes
from diffprobe.probes.stats import binomial_p_value, chance_level, wilson_interval

__all__ = ["ProbeFit", "binomial_p_value", "chance_level", "class_mask", "fit_probes", "wilson_interval"]
