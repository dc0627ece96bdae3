"""How fast the ConceptShapes DataModule feeds training: whole-batch fetching (``fetch_batch``,
what ``train_dataloader()`` does) against the per-sample fetch-and-collate it replaced (a
DataLoader over ``__getitem__`` with torch's default collate), in the same process; and the cost of
the exact-resume data path (``train_dataloader()``'s ResumableSampler, an order that is the seed's
and the epoch's) against the plain shuffled DataLoader it replaced (``shuffle=True``), interleaved
repeats, median of each.

At the GPU goal (4,000 images/s at batch 128, a 32 ms step) with ``num_workers: 0`` the loader
runs on the training process between steps, so its milliseconds per batch add to every step.

    python benchmarks/data_loader.py [--image-size 32] [--batch-size 128] [--batches 300] [--num-workers 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.data import DataLoader, default_collate

from diffprobe.training import ConceptShapesDataModule
from diffprobe.training.datamodules import WholeBatches, collate_batches


def milliseconds_per_batch(loader: DataLoader, batches: int) -> float:
    iterator, seen = iter(loader), 0
    next(iterator)  # the first batch builds caches and workers
    start = time.perf_counter()
    while seen < batches:
        try:
            next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        seen += 1
    return (time.perf_counter() - start) * 1000 / batches


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = ConceptShapesDataModule(image_size=args.image_size, train_size=args.train_size, batch_size=args.batch_size, num_workers=args.num_workers)
    batched = data.train_dataloader()
    per_sample = DataLoader(data.train_dataset(), batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=default_collate)
    shuffled = DataLoader(
        WholeBatches(data.train_dataset()), batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=collate_batches,
        num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
    )  # fmt: skip
    baseline = milliseconds_per_batch(per_sample, args.batches)
    resumable_runs, shuffled_runs = [], []
    for _ in range(args.repeats):
        shuffled_runs.append(milliseconds_per_batch(shuffled, args.batches))
        resumable_runs.append(milliseconds_per_batch(batched, args.batches))
    fast, plain = statistics.median(resumable_runs), statistics.median(shuffled_runs)
    result = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "per_sample_ms_per_batch": round(baseline, 3),
        "batched_ms_per_batch": round(fast, 3),
        "batched_img_s": round(args.batch_size * 1000 / fast),
        "speedup": round(baseline / fast, 2),
        "num_workers": args.num_workers,
        "shuffled_img_s": round(args.batch_size * 1000 / plain),
        "resumable_img_s": round(args.batch_size * 1000 / fast),
        "resumable_vs_shuffled_img_s_ratio": round(plain / fast, 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
