"""What live concept fidelity costs during training: the reference config's model (conditional tiny
UNet, 16x16 ConceptShapes) fitted with and without ConceptFidelity, in one process (interleaved
repeats, median of each). The fit with the callback measures once inside the timed steps; the cost
of one measurement is the wall-clock difference, and the overhead at an interval of N steps is that
cost over N baseline steps. The concept reader is trained (or loaded from the cache) before any
timing: a run pays it once per data configuration, and the time is reported apart. Prints one JSON
line last.

    python benchmarks/fidelity_cost.py                       # CPU; about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch
from _timing import StepTimer
from lightning.pytorch.loggers import TensorBoardLogger

from diffprobe.fidelity.readers import cached_reader
from diffprobe.training.callbacks import ConceptFidelity
from diffprobe.training.datamodules import ConceptShapesDataModule
from diffprobe.training.module import DiffusionModule


def build(args) -> tuple[DiffusionModule, ConceptShapesDataModule]:
    """configs/shapes_reference.yaml's model and data (a smaller training split: only speed matters)."""
    torch.manual_seed(0)
    data = ConceptShapesDataModule(image_size=16, train_size=args.batch_size * 16, heldout_size=500, batch_size=args.batch_size)
    module = DiffusionModule(preset="tiny", image_size=16, conditional=True, vocabulary=data.vocabulary, max_caption_tokens=16,
                             condition_dropout=0.1, guidance_scale=3.0, learning_rate=2e-3, warmup_steps=0)  # fmt: skip
    return module, data


def run(args, callbacks, root: str) -> float:
    """Wall-clock seconds of the timed steps of one fit (anything callbacks do between them included)."""
    module, data = build(args)
    timer = StepTimer(args.warmup)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision="32-true", max_steps=args.warmup + args.steps,
        logger=TensorBoardLogger(root, name="fidelity_cost"), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer, *callbacks],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return timer.wall_end - timer.wall_start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num-captions", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    _, data = build(args)
    started = time.perf_counter()
    cached_reader(data.reader_data(20_000), steps=3000, seed=0)  # what the callback's default reader needs
    reader_seconds = time.perf_counter() - started
    # Measured once at the middle of the timed steps (its step-0 and final measurements fall outside them).
    every = args.warmup + args.steps // 2
    settings = {
        "baseline": lambda: [],
        "fidelity": lambda: [ConceptFidelity(every_n_steps=every, num_captions=args.num_captions)],
    }
    measured: dict[str, list[float]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory(prefix="diffprobe-bench-") as root:
        for _ in range(args.repeats):
            for name, callbacks in settings.items():
                measured[name].append(run(args, callbacks(), root))
    base, with_fidelity = (statistics.median(measured[name]) for name in settings)
    step_seconds = base / args.steps
    measurement_seconds = with_fidelity - base
    result = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        **vars(args),
        "reader_seconds_once_per_data": round(reader_seconds, 1),
        "train_step_seconds": round(step_seconds, 3),
        "fidelity_measurement_seconds": round(measurement_seconds, 1),
        # The callback's default interval, and the reference config's.
        "overhead_every_1000_steps": round(measurement_seconds / (1000 * step_seconds), 4),
        "overhead_every_500_steps": round(measurement_seconds / (500 * step_seconds), 4),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
