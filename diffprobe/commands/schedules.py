"""``probe.py schedules``: sampling under the paper's timestep schedules (uniform, exponential early
/ latter, or a window); :class:`TimestepSchedules` is also the ``--schedule`` of ``relevance`` and
``correlation``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

from diffprobe.choices import Schedule
from diffprobe.commands.common import CommandError, Device, DType, Weights, command, flag
from diffprobe.commands.outputs import Outputs, check_outputs
from diffprobe.commands.source import load_explain_model, resolve
from diffprobe.report import tb


@dataclass(frozen=True)
class TimestepSchedules:
    """The timestep schedules a run samples under (paper: N = 30, lambda = 60).

    Args:
        kinds: which schedules, one run each (paper: uniform, early, latter)
        steps: N, steps of the uniform / early / latter schedules
        lam: lambda of the exponential early / latter schedules
        window_start: window schedule: steps packed in [start, start + width]
        window_width: window schedule: width of the window
        window_steps: window schedule: steps inside the window
        window_uniform_steps: window schedule: evenly spread steps besides the window
    """

    kinds: tuple[Schedule, ...] = ("uniform", "early", "latter")
    steps: PositiveInt = 30
    lam: PositiveFloat = 60.0
    window_start: NonNegativeInt = 400
    window_width: PositiveInt = 200
    window_steps: PositiveInt = 20
    window_uniform_steps: PositiveInt = 10

    def timesteps(self, scheduler_config: dict) -> dict[str, list[int]]:
        """Each schedule's timesteps for a model's noise schedule (T from its config)."""
        from diffusers import DDPMScheduler

        from diffprobe.diffusion.timesteps import schedule_timesteps

        if not self.kinds:
            raise CommandError("--schedule.kinds is empty; give at least one of uniform, early, latter, window")
        scheduler = DDPMScheduler.from_config(scheduler_config)
        T = scheduler.config.num_train_timesteps
        if self.steps > T and set(self.kinds) - {"window"}:
            raise CommandError(f"--schedule.steps {self.steps}: this model has {T} training timesteps, so a schedule has at most {T} steps")
        if "window" in self.kinds and self.window_start + self.window_width > T - 1:
            raise CommandError(
                f"--schedule.window_start {self.window_start} + --schedule.window_width {self.window_width} reaches past the model's last "
                f"timestep, {T - 1}: move the window inside [0, {T - 1}]"
            )
        window = dict(
            uniform_steps=self.window_uniform_steps, window_steps=self.window_steps, start=self.window_start, width=self.window_width
        )
        with flag("--schedule"):
            return {kind: schedule_timesteps(kind, scheduler, self.steps, self.lam, **window) for kind in self.kinds}


@command
def schedules(
    ckpt: str, out: str, schedule: TimestepSchedules = TimestepSchedules(), seeds: tuple[int, ...] = (0, 1, 2, 3), prompt: str | None = None,
    guidance: float | None = None, weights: Weights = "ema", logdir: str | None = None, device: Device = "auto", dtype: DType = "float32", scale: PositiveInt = 8,
) -> Path:  # fmt: skip
    """Sample the same seeds under each timestep schedule: rows are schedules, columns seeds.

    Args:
        seeds: one image per seed and schedule
    """
    import torch

    from diffprobe.explain.schedules import schedule_images
    from diffprobe.report import viz

    check_outputs(out, logdir)
    if not seeds:
        raise CommandError("--seeds is empty; give at least one seed, e.g. --seeds '[0, 1]'")
    source = resolve(ckpt)
    entry = source.newest
    model, global_step = load_explain_model(entry, weights=weights, device=device, guidance=guidance, dtype=dtype)
    with flag("--prompt"):
        encoded = model.prompt(prompt)
    timesteps = schedule.timesteps(model.scheduler_config)
    outputs = Outputs(out, source.logdir(logdir), global_step, scale, model=entry.name)
    started = time.perf_counter()
    images = schedule_images(model, encoded, list(seeds), timesteps)
    seconds = time.perf_counter() - started
    # Rows: schedules, labelled with where their steps lie (early / latter stop well before t = 0).
    rows = {f"{name}\n{len(steps)} steps\nt {steps[0]}..{steps[-1]}": images[name] for name, steps in timesteps.items()}
    title = f"the same seeds under each timestep schedule ({outputs.model})" + (f"\n{prompt!r}" if prompt else "")
    outputs.figure("schedules", viz.image_rows(rows, [f"seed {s}" for s in seeds], title), tb.explain_tag("schedules", "figure"))
    grid = torch.cat([images[name] for name in timesteps])
    outputs.image("schedules_grid", viz.image_grid(grid, columns=len(seeds)) * 2 - 1, tb.explain_tag("schedules", "images"))
    for name, batch in images.items():
        torch.save(batch, outputs.out / f"{name}.pt")
    outputs.save("schedules", {"seeds": list(seeds), "prompt": prompt, "timesteps": timesteps, "seconds": round(seconds, 3)})
    print(f"wrote {outputs.out}/schedules.png (rows: {', '.join(timesteps)}; columns: seeds {list(seeds)})")
    return outputs.close()
