"""Hidden capabilities (Park et al., NeurIPS 2024) on a concept-conditional model, per timestep.

A combination of concept values held out of training (``ShapesDesign.heldout_combinations``) is
prompted at every checkpoint, plainly and under three interventions (:mod:`.prompts`,
:mod:`.generate`); the reader says when each makes the combination (:mod:`.timeline`: learning
speed, the hidden window). :mod:`.represented` adds what the paper could not see: whether the
UNet's layers already carry the combination's values, per layer and t, before it is generated.
No Lightning here.
"""
