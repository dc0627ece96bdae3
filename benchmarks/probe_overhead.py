"""What live probes cost during training: the same fit with no probes, with OnlineProbes, and with
ProbeMonitor every N steps, in one process (interleaved repeats, median of each). Overhead =
wall-clock images/s ratio over the timed steps (ProbeMonitor's evaluations included). Every run
logs to TensorBoard, as a real run does, in a temporary folder (removed at the end). Prints one
JSON line last.

    python benchmarks/probe_overhead.py                                  # CPU, the quick-start model
    python benchmarks/probe_overhead.py --preset ddpm-cifar10 --image-size 32 --batch-size 128 --steps 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import lightning.pytorch as pl
import torch
from _timing import StepTimer
from lightning.pytorch.loggers import TensorBoardLogger

from diffprobe.training.callbacks import OnlineProbes, ProbeMonitor
from diffprobe.training.datamodules import ConceptShapesDataModule
from diffprobe.training.module import DiffusionModule


def run(args, callbacks, root: str) -> float:
    """One fit; its run folder (TensorBoard events, ProbeMonitor's probe_set.pt) is a new version
    under ``root``, never the working directory."""
    torch.manual_seed(0)
    data = ConceptShapesDataModule(image_size=args.image_size, train_size=max(args.batch_size * 8, 1024), heldout_size=args.probe_images, batch_size=args.batch_size)
    module = DiffusionModule(preset=args.preset, image_size=args.image_size, warmup_steps=0)
    timer = StepTimer(args.warmup)
    gpu = torch.cuda.is_available()
    trainer = pl.Trainer(
        accelerator="gpu" if gpu else "cpu", devices=1, precision="bf16-mixed" if gpu else "32-true",
        max_steps=args.warmup + args.steps, logger=TensorBoardLogger(root, name="probe_overhead"), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer, *callbacks],
    )
    trainer.fit(module, datamodule=data)
    return timer.wall_images_per_second(args.batch_size)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--monitor-every", type=int, default=40, help="ProbeMonitor cadence in steps")
    parser.add_argument("--probe-images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    # Interleaved repeats, median per setting: this machine's speed drifts by ~10% between runs.
    settings = {
        "baseline": lambda: [],
        "online": lambda: [OnlineProbes(log_every_n_steps=50)],
        # A ProbeMonitor evaluation (probe-set features at 15 timesteps + fits) every monitor_every steps.
        "monitor": lambda: [ProbeMonitor(every_n_steps=args.monitor_every, num_images=args.probe_images, method="ridge")],
    }
    measured = {name: [] for name in settings}
    with tempfile.TemporaryDirectory(prefix="diffprobe-bench-") as root:
        for _ in range(args.repeats):
            for name, callbacks in settings.items():
                measured[name].append(run(args, callbacks(), root))
    base, online, monitor = (statistics.median(measured[name]) for name in settings)
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        **vars(args),
        "baseline_img_s": round(base, 1),
        "online_probes_img_s": round(online, 1),
        "probe_monitor_img_s": round(monitor, 1),
        "online_probes_overhead": round(base / online - 1, 4),
        "probe_monitor_overhead": round(base / monitor - 1, 4),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
