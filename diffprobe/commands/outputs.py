"""Where an explanation command's results go: a new ``--out`` folder (PNGs, ``.pt`` tensors, a JSON
of numbers) and, with ``--run``, the same images, figures and scalars in that run's TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from diffprobe.commands.common import CommandError, new_folder


def check_outputs(out: str | Path, run: str | Path | None) -> None:
    """``out`` is new or empty and ``run`` (if given) is a folder: every command calls this first,
    before anything is loaded, so a refusal costs nothing."""
    new_folder(out)
    if run is not None and not Path(run).is_dir():
        raise CommandError(f"--run {run} is not a directory; give a run directory such as runs/quickstart/version_0")


class Outputs:
    """A new output folder, plus the run's TensorBoard when ``run`` is given. Make it once every
    input is checked: it creates the folder (and, at its first write, the run's events file)."""

    def __init__(self, out: str | Path, run: str | Path | None, global_step: int, scale: int, model: str = ""):
        check_outputs(out, run)
        self.out = Path(out)
        self.model = f"{model}, training step {global_step}" if model else f"training step {global_step}"  # for titles
        self.out.mkdir(parents=True, exist_ok=True)
        self.scale, self.global_step, self.run = scale, global_step, run
        self._writer = None

    @property
    def writer(self):
        """The run's SummaryWriter, made at the first write (a new events file beside the run's
        own: nothing of the run is rewritten); None without ``run``."""
        if self._writer is None and self.run is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run))
        return self._writer

    def image(self, name: str, image, tag: str | None = None) -> Path:
        """(C, H, W) tensor in [-1, 1]."""
        from diffprobe import viz

        image = viz.to_unit(image.detach().float().cpu())
        path = viz.save_png(image, self.out / f"{name}.png", scale=self.scale)
        if self.writer is not None:
            self.writer.add_image(tag or f"explain/{name}", image, self.global_step)
        return path

    def overlays(self, name: str, heat, model, step, tag: str, tool: str) -> None:
        """The (h, w) map over the decoded x_t and over the final image (the paper's two views):
        ``<name>.png``, a titled figure with a colour bar, and the two overlays as plain images
        (``<name>_xt.png``, ``<name>_final.png``, TensorBoard's image cards)."""
        from diffprobe import viz

        x_t, final = model.decode(step.x_t)[0], model.decode(step.final)[0]
        views = {f"over x_t (t = {step.t})": (x_t, heat), "over the final image": (final, heat)}
        title = f"{tool} ({self.model}): step {step.index} of {len(step.timesteps)}, t = {step.t}, seed {step.seed}"
        if step.prompt is not None:
            title += f"\n{step.prompt.text!r}"
        self.figure(name, viz.saliency_figure(views, title), f"{tag}/figure")
        self.image(f"{name}_xt", viz.heat_overlay(x_t, heat), f"{tag}/x_t")
        self.image(f"{name}_final", viz.heat_overlay(final, heat), f"{tag}/final")

    def figure(self, name: str, figure, tag: str | None = None) -> None:
        figure.savefig(self.out / f"{name}.png")
        if self.writer is not None:
            self.writer.add_figure(tag or f"explain/{name}", figure, self.global_step)

    def scalar(self, tag: str, value: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, self.global_step)

    def save(self, name: str, numbers: dict, tensors: dict | None = None) -> None:
        (self.out / f"{name}.json").write_text(json.dumps(numbers, indent=1))
        if tensors is not None:
            import torch

            torch.save(tensors, self.out / f"{name}.pt")

    def close(self) -> Path:
        if self._writer is not None:
            self._writer.close()
        return self.out


def step_tag(tool: str, step) -> str:
    """TensorBoard tag prefix of one explained step: ``explain/<tool>/step15_t0249``."""
    return f"explain/{tool}/step{step.index:02d}_t{step.t:04d}"


def step_numbers(step, seconds: float) -> dict:
    """What every single-step result file records about the explained step."""
    prompt = None if step.prompt is None else step.prompt.text
    return {"step": step.index, "t": step.t, "timesteps": step.timesteps, "seed": step.seed, "prompt": prompt, "seconds": round(seconds, 3)}
