"""A check of the hidden window: is the held-out combination made *with an object*?

The examples at step 850 (examples_*.png) show over-prompted and moved captions shrinking the
object until it is faint or gone, while the reader still says "small blue" (it never saw an empty
image). This counts, per variant, the images where the reader reads both held-out values *and* the
caption's position (readable only where an object is): the same samples as probe.py hidden's
(same prompts, seeds and settings). Writes object_check.json beside this file.

    python docs/hidden_capabilities/object_check.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffprobe.data.shapes import CONCEPT_NAMES, ShapesDesign
from diffprobe.diffusion.model import load_checkpoint
from diffprobe.fidelity.readers import cached_reader
from diffprobe.hidden.prompts import heldout_prompts
from diffprobe.hidden.scores import reader_probabilities
from diffprobe.hidden.study import StudySettings, examples
from diffprobe.training.datamodules import ConceptShapesDataModule

HERE = Path(__file__).resolve().parent
RUN = HERE.parents[1] / "runs/hidden_capabilities_fine/contrast_1.0/version_0"
STEPS = (750, 800, 850, 900, 950)


def main() -> None:
    torch.manual_seed(0)
    settings = StudySettings()
    module = ConceptShapesDataModule(image_size=16, train_size=64, heldout_size=1000, heldout_combinations=[["small", "blue"]])
    reader = cached_reader(module.reader_data(20_000), steps=3000, seed=0).reader
    prompts = heldout_prompts(("small", "blue"), settings.num_images, settings.seed)
    held = prompts.concept_indices
    position = CONCEPT_NAMES.index("position")
    rows = []
    for step in STEPS:
        model = load_checkpoint(RUN / "checkpoints" / f"step={step:06d}.ckpt").frozen()
        shown = examples(model, ShapesDesign((("small", "blue"),)), prompts, settings, count=settings.num_images)
        row: dict = {"step": step}
        for variant, images in shown.items():
            readings = torch.stack([p.argmax(-1) for p in reader_probabilities(reader, images)], dim=1)
            hits = readings == prompts.labels
            made = hits[:, held].all(1)
            row[variant] = {"combination": float(made.float().mean()), "with_position": float((made & hits[:, position]).float().mean())}
        rows.append(row)
        print(row, flush=True)
    (HERE / "object_check.json").write_text(json.dumps({"run": str(RUN.relative_to(HERE.parents[1])), "n": settings.num_images, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
