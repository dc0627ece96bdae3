"""The diffusion maths the rest stands on, without Lightning: the DDPM noise process (``ddpm``),
timestep grids and schedules (``timesteps``), UNets (``unet``), caption encoders (``captions``),
the one reverse-process loop (``sampling``), timestep-binned metrics (``metrics``), and the
model container with its loaders (``model``: checkpoints; ``folders``: diffusers folders)."""
