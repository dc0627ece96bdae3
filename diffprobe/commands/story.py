"""``probe.py story``: a run's learning story from what ``fidelity``, ``linear`` and ``intervene``
measured on its checkpoints: per concept, over training, the step it is rendered, how far into the
noise it is learned and decodable, and its lock-in time. Writes ``learning_story.json`` and
``learning_story.png`` into ``out`` (default ``<run>/story``) and the figure to TensorBoard
(``Overview/learning_story``)."""

from __future__ import annotations

from pathlib import Path

from diffprobe.choices import Weights
from diffprobe.commands.common import CommandError, command


def train_minutes(run_dir: Path) -> float | None:
    """Wall-clock minutes between the run's first and last ``train/loss`` event (all sessions)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from diffprobe.report import tb

    times: list[float] = []
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tb.LOSS in accumulator.Tags().get("scalars", []):
            times += [e.wall_time for e in accumulator.Scalars(tb.LOSS)]
    return round((max(times) - min(times)) / 60, 1) if len(times) > 1 else None


@command
def story(ckpt: str, out: str | None = None, weights: Weights = "ema", train_command: str | None = None, logdir: str | None = None) -> Path:
    """A run's learning story: rendered (fidelity), learned and decodable (probes), decided (prompt switch), per concept over training.

    Args:
        ckpt: the run directory whose fidelity/, probes/ and intervene/ folders the other commands wrote
        out: output folder (default: <run>/story)
        weights: the EMA or raw weights' measurements
        train_command: the command that trained the run, recorded in the story (default: train.py with the run's config.yaml)
    """
    import json

    from diffprobe.commands.source import resolve
    from diffprobe.fidelity import results as fidelity_results
    from diffprobe.io import atomic
    from diffprobe.probes import results as probe_results
    from diffprobe.report import tb
    from diffprobe.report.story import learning_story, story_figure
    from diffprobe.report.writer import LazyWriter

    source = resolve(ckpt)
    run = source.run_dir
    if run is None:
        raise CommandError(f"--ckpt {ckpt} is not a training run; give the run directory the other commands measured")
    fidelity_rows = [r for r in fidelity_results.table(run / "fidelity").read_rows() if r["weights"] == weights]
    probe_rows = probe_results.read_rows(run / "probes")
    intervene = run / "intervene" / "intervene.json"
    intervene_summary = json.loads(intervene.read_text()).get("summary", {}) if intervene.is_file() else {}
    if not fidelity_rows and not probe_rows and not intervene_summary:
        raise CommandError(f"{run} holds no measurements yet: run probe.py fidelity, linear and/or intervene --mode switch on it first")
    command_text = train_command or f"python train.py fit --config {run / 'config.yaml'}"
    made = learning_story(fidelity_rows, fidelity_results.rendered(fidelity_rows, weights), probe_rows, intervene_summary,
                          weights=weights, command=command_text, train_minutes=train_minutes(run))  # fmt: skip
    folder = Path(out) if out else run / "story"
    atomic.write_json(folder / "learning_story.json", made)
    # The default probe grid ends at T - 1: the t axis spans it (an axis limit, nothing is measured on it).
    num_train_timesteps = max((int(r["t"]) for r in probe_rows), default=999) + 1
    figure = story_figure(made, num_train_timesteps, f"learning story of {run.name}: rendered, learned, decodable, decided ({weights} weights)")
    atomic.save_figure(figure, folder / "learning_story.png")
    steps = [e["step"] for c in made["concepts"].values() for e in c["over_training"]]
    tensorboard = LazyWriter(source.logdir(logdir))
    tensorboard.figure(tb.LEARNING_STORY, figure, max(steps, default=0))
    tensorboard.close()
    print(f"probe.py story: {len(made['concepts'])} concepts -> {folder}")
    return folder
