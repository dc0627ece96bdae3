"""Causal timing: when a concept is *decided*, next to when it is *decodable*.

- ``reader``: a concept reader (small CNN) that says which value of each concept an image shows.
- ``branching``: sampling runs that branch off one shared trunk with the same noise.
- ``switch``: prompt-switch insertion (CIS per switch time, lock-in time t_lock).
- ``steer``: shifting a layer's features along a probe's class-difference direction.
- ``plans``: what is done per concept, decided before anything is sampled (frozen plans, and the
  rule that picks the probe cell a concept is steered with).
- ``measure``: a plan on one model, as images and scores (pure functions).
- ``results`` / ``figures``: the table ``probe.py intervene`` keeps, the summaries made from its
  rows, and their figures.

Nothing here imports Lightning, ``diffprobe.training`` or ``diffprobe.commands``: the command layer
loads models and data and writes files.
"""
