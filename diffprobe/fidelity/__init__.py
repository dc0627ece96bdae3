"""Concept fidelity: does the model *render* each concept, and from which training step?

Samples are read by the concept reader (``intervene.reader``, trained on the data's clean images):

- conditional models: for held-out captions, the share of samples showing the caption's value of
  each concept, with a Wilson interval;
- unconditional models: the total-variation distance between the reader's value distribution on
  samples and on held-out data, and the share of samples the reader is confident about;
- memorisation: the share of samples whose nearest training image is much closer than the second
  nearest (Carlini et al. 2023);
- ``rendered_at_step``: the first step from which fidelity stays >= 0.90 (TV <= 0.10).

"Rendered" is the claim these numbers make; "decodable" and "learned" are the probes'.
"""
