"""``probe.py relevance``: cross-attention token relevance (Chefer et al. 2021) at every step of a
sampling run under each timestep schedule (conditional models): per-token curves over the steps,
totals per schedule, the final images, and the numbers as JSON and ``.pt``."""

from __future__ import annotations

import time
from pathlib import Path

from jsonargparse.typing import PositiveInt

from diffprobe.commands.common import Device, DType, Weights, command, flag
from diffprobe.commands.outputs import Outputs, check_outputs
from diffprobe.commands.schedules import TimestepSchedules
from diffprobe.commands.source import load_explain_model, require_conditional, resolve
from diffprobe.report import tb


@command
def relevance(
    ckpt: str, out: str, prompt: str | None = None, schedule: TimestepSchedules = TimestepSchedules(), seed: int = 0, guidance: float | None = None,
    weights: Weights = "ema", logdir: str | None = None, device: Device = "auto", dtype: DType = "float32", scale: PositiveInt = 8,
) -> Path:  # fmt: skip
    """Cross-attention token relevance at every step of a run under each timestep schedule
    (conditional models)."""
    import torch

    from diffprobe.explain.relevance import relevance_over_run
    from diffprobe.report import viz

    check_outputs(out, logdir)
    source = resolve(ckpt)
    model, global_step = load_explain_model(source.newest, weights=weights, device=device, guidance=guidance, dtype=dtype)
    require_conditional(model, "token relevance")
    with flag("--prompt"):
        encoded = model.prompt(prompt)
    timesteps = schedule.timesteps(model.scheduler_config)
    outputs = Outputs(out, source.logdir(logdir), global_step, scale)
    started = time.perf_counter()
    runs = {name: relevance_over_run(model, encoded, seed=seed, timesteps=steps) for name, steps in timesteps.items()}
    seconds = time.perf_counter() - started
    words = encoded.word_tokens
    labels = [f"{i}:{w}" for i, w in enumerate(words)]
    panels = {name: {label: (run.timesteps, run.scores[:, i].tolist()) for i, label in enumerate(labels)} for name, run in runs.items()}
    outputs.figure(
        "relevance_curves",
        viz.line_panels(panels, f"token relevance per step: {encoded.text!r}", "timestep t", "relevance (min-max per step)", invert_x=True),
        tb.explain_tag("relevance", "curves"),
    )
    totals = {name: run.totals().tolist() for name, run in runs.items()}
    outputs.figure(
        "relevance_totals",
        viz.grouped_bars(totals, labels, "token relevance summed over the run's steps", "sum of relevance", "word (position: token)"),
        tb.explain_tag("relevance", "totals"),
    )
    finals = torch.cat([model.decode(run.final) for run in runs.values()])
    outputs.image("relevance_images", viz.image_grid(finals, columns=len(finals)) * 2 - 1, tb.explain_tag("relevance", "images"))
    for name, values in totals.items():
        for label, value in zip(labels, values):
            outputs.scalar(tb.explain_tag("relevance", name, label), value)
    per_schedule = {name: {"timesteps": run.timesteps, "scores": run.scores.tolist(), "totals": totals[name]} for name, run in runs.items()}
    numbers = {"prompt": encoded.text, "words": words, "seed": seed, "seconds": round(seconds, 3), "schedules": per_schedule}
    outputs.save(
        "relevance",
        numbers,
        {name: {"timesteps": run.timesteps, "scores": run.scores, "final": run.final.cpu()} for name, run in runs.items()},
    )
    print(f"token relevance under {', '.join(runs)} ({seconds:.1f} s) -> {outputs.out}")
    return outputs.close()
