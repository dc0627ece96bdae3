"""Where an explanation command's results go: a new ``--out`` folder (PNGs, ``.pt`` tensors, a JSON
of numbers) and the same images, figures and scalars in TensorBoard (``--logdir``; by default the
run of ``--ckpt``)."""

from __future__ import annotations

from pathlib import Path

from diffprobe.commands.common import CommandError, new_folder
from diffprobe.io import atomic
from diffprobe.report import tb
from diffprobe.report.writer import LazyWriter


def check_outputs(out: str | Path, logdir: str | Path | None) -> None:
    """``out`` is new or empty and ``logdir`` (if given) is not a file: every command calls this
    first, before anything is loaded, so a refusal costs nothing."""
    new_folder(out)
    if logdir is not None and Path(logdir).exists() and not Path(logdir).is_dir():
        raise CommandError(f"--logdir {logdir} is a file; give a TensorBoard directory such as runs/quickstart/version_0")


class Outputs:
    """A new output folder, plus TensorBoard in ``logdir`` when there is one. Make it once every
    input is checked: it creates the folder (and, at its first write, a new events file)."""

    def __init__(self, out: str | Path, logdir: str | Path | None, global_step: int, scale: int, model: str = ""):
        check_outputs(out, logdir)
        self.out = Path(out)
        self.model = f"{model}, training step {global_step}" if model else f"training step {global_step}"  # for titles
        self.out.mkdir(parents=True, exist_ok=True)
        self.scale, self.global_step = scale, global_step
        self.tensorboard = LazyWriter(logdir)

    def image(self, name: str, image, tag: str | None = None) -> Path:
        """(C, H, W) tensor in [-1, 1]."""
        from diffprobe.report import viz

        image = viz.to_unit(image.detach().float().cpu())
        path = viz.save_png(image, self.out / f"{name}.png", scale=self.scale)
        self.tensorboard.image(tag or tb.explain_tag(name), image, self.global_step)
        return path

    def overlays(self, name: str, heat, model, step, tag: str, tool: str) -> None:
        """The (h, w) map over the decoded x_t and over the final image (the paper's two views):
        ``<name>.png``, a titled figure with a colour bar, and the two overlays as plain images
        (``<name>_xt.png``, ``<name>_final.png``, TensorBoard's image cards)."""
        from diffprobe.report import viz

        x_t, final = model.decode(step.x_t)[0], model.decode(step.final)[0]
        views = {f"over x_t (t = {step.t})": (x_t, heat), "over the final image": (final, heat)}
        title = f"{tool} ({self.model}): step {step.index} of {len(step.timesteps)}, t = {step.t}, seed {step.seed}"
        if step.prompt is not None:
            title += f"\n{step.prompt.text!r}"
        self.figure(name, viz.saliency_figure(views, title), f"{tag}/figure")
        self.image(f"{name}_xt", viz.heat_overlay(x_t, heat), f"{tag}/x_t")
        self.image(f"{name}_final", viz.heat_overlay(final, heat), f"{tag}/final")

    def figure(self, name: str, figure, tag: str | None = None) -> None:
        atomic.save_figure(figure, self.out / f"{name}.png")
        self.tensorboard.figure(tag or tb.explain_tag(name), figure, self.global_step)

    def scalar(self, tag: str, value: float) -> None:
        self.tensorboard.scalars({tag: value}, self.global_step)

    def save(self, name: str, numbers: dict, tensors: dict | None = None) -> None:
        atomic.write_json(self.out / f"{name}.json", numbers)
        if tensors is not None:
            atomic.save_torch(self.out / f"{name}.pt", tensors)

    def close(self) -> Path:
        self.tensorboard.close()
        return self.out


def step_tag(tool: str, step) -> str:
    """TensorBoard tag prefix of one explained step: ``explain/<tool>/step15_t0249``."""
    return tb.explain_step_tag(tool, step.index, step.t)


def step_numbers(step, seconds: float) -> dict:
    """What every single-step result file records about the explained step."""
    prompt = None if step.prompt is None else step.prompt.text
    return {"step": step.index, "t": step.t, "timesteps": step.timesteps, "seed": step.seed, "prompt": prompt, "seconds": round(seconds, 3)}
