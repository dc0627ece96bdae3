"""docs/reference_run/samples_over_training.png: the same 8 held-out captions (fixed seed) sampled
at several checkpoints of the reference run, one row per training step.

    python docs/reference_run/samples_over_training.py runs/shapes_reference/version_0
"""

import sys
from pathlib import Path

from diffprobe.data.shapes import ConceptShapes
from diffprobe.diffusion import sampling
from diffprobe.diffusion.model import load_checkpoint
from diffprobe.io.atomic import save_figure
from diffprobe.report import viz

run = Path(sys.argv[1])
steps = [0, 500, 1000, 1500, 2000, 6000]
heldout = ConceptShapes(size=8, image_size=16, split="test", seed=0)
captions = [heldout.caption(i) for i in range(8)]
rows = {}
for step in steps:
    model = load_checkpoint(run / "checkpoints" / f"step={step:06d}.ckpt")
    images = sampling.sample(model.unet, model.scheduler, model.caption_encoder, 8, seed=0, num_inference_steps=50, captions=captions,
                             guidance_scale=model.guidance_scale)  # fmt: skip
    rows[f"step {step}"] = images
columns = [" ".join(c.split()[1:3]) + "\n" + " ".join(c.split()[3:5]) for c in captions]  # size colour / texture shape
figure = viz.image_rows(rows, columns, "the reference run: the same captions and noise at each training step (EMA weights, DDPM 50 steps, w = 3)")
save_figure(figure, Path(__file__).with_name("samples_over_training.png"))
print("\n".join(f"{i}: {c}" for i, c in enumerate(captions)))
