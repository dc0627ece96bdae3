"""Linear concept probes: batched fitting, controls and significance, and the probe pipeline."""

from diffprobe.probes.fit import ProbeFit, fit_probes
from diffprobe.probes.stats import binomial_p_value, majority_chance, wilson_interval

__all__ = ["ProbeFit", "binomial_p_value", "fit_probes", "majority_chance", "wilson_interval"]
