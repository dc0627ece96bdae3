"""Training speed on a CPU that another process keeps busy: torch's defaults against diffprobe's
CPU policy (``diffprobe.cpu``: passive OpenMP waiting, threads = free cores).

Each case runs in a fresh process (OpenMP reads its settings once, at start) that times training
steps of the quick start's UNet (``tiny`` preset, 16x16, batch 64, AdamW). The competitor is one
busy process (a pure-Python loop on one core, like a browser tab or an IDE indexing). Speeds are
reported as ratios to the idle machine with torch's defaults, measured in the same run.

    python benchmarks/cpu_under_load.py [--steps 20] [--out benchmarks/results/cpu_under_load.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, time
if sys.argv[1] == "diffprobe":
    from diffprobe import cpu
    cpu.configure()
import torch
from diffprobe.diffusion.unet import build_unet
torch.manual_seed(0)
unet = build_unet("tiny", conditional=False, image_size=16)
optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
x, t = torch.randn(64, 3, 16, 16), torch.randint(0, 1000, (64,))
def step():
    loss = (unet(x, t).sample - x).square().mean()
    optimizer.zero_grad(); loss.backward(); optimizer.step()
for _ in range(3):
    step()
steps = int(sys.argv[2])
start = time.perf_counter()
for _ in range(steps):
    step()
seconds = time.perf_counter() - start
print(json.dumps({"threads": torch.get_num_threads(), "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default: active)"),
                  "images_per_second": steps * 64 / seconds}))
"""


def _busy() -> None:
    while True:
        pass


def run_case(policy: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "DIFFPROBE_CPU_THREADS")}
    found = subprocess.run([sys.executable, "-c", CHILD, policy, str(steps)], env=env, capture_output=True, text=True, check=True)
    return json.loads(found.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    results = {"idle, torch defaults": run_case("torch", args.steps), "idle, diffprobe": run_case("diffprobe", args.steps)}
    competitor = multiprocessing.Process(target=_busy, daemon=True)
    competitor.start()
    time.sleep(65)  # let the 1-minute load average see the competitor, as it would on a busy laptop
    try:
        results["one busy process, torch defaults"] = run_case("torch", args.steps)
        results["one busy process, diffprobe"] = run_case("diffprobe", args.steps)
    finally:
        competitor.terminate()
    baseline = results["idle, torch defaults"]["images_per_second"]
    for case in results.values():
        case["ratio_to_idle_torch_defaults"] = round(case["images_per_second"] / baseline, 3)
        case["images_per_second"] = round(case["images_per_second"], 1)
    report = {"cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "steps": args.steps, "cases": results}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
