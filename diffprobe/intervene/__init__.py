"""Causal timing: when a concept is *decided*, next to when it is *decodable*.

- ``reader``: a concept reader (small CNN) that says which value of each concept an image shows.
- ``branching``: sampling runs that branch off one shared trunk with the same noise.
- ``switch``: prompt-switch insertion (CIS per switch time, lock-in time t_lock).
- ``steer``: shifting a layer's features along a probe's class-difference direction.
- ``results`` / ``figures``: the table ``probe.py intervene`` keeps and its figures.
"""
