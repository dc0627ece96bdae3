"""DF-RISE batched (many masks per UNet call) vs one mask per UNet call, same model, same masks,
in one process. Also checks the two give the same saliency. Prints one JSON line last.

    python benchmarks/rise.py                                   # CPU: tiny preset, 16x16, 64 masks
    python benchmarks/rise.py --preset ddpm-cifar10 --image-size 32 --masks 500 --batch-size 250   # GPU
    python benchmarks/rise.py --ckpt runs/quickstart/version_0  # a trained checkpoint
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from diffprobe.diffusion.ddpm import build_scheduler
from diffprobe.diffusion.unet import build_unet
from diffprobe.explain.model import from_parts
from diffprobe.explain.rise import df_rise
from diffprobe.explain.run import explain_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(model, step, masks: int, batch_size: int, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of ``repeats`` DF-RISE runs, and the saliency."""
    times = []
    for _ in range(repeats):
        _sync(model.device)
        start = time.perf_counter()
        saliency = df_rise(model, step, num_masks=masks, batch_size=batch_size).saliency
        _sync(model.device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], saliency


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="UNet preset (random weights: speed does not depend on them)")
    parser.add_argument("--ckpt", help="use a diffprobe checkpoint or run directory instead of a preset")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--masks", type=int, default=64, help="masks per DF-RISE run (paper: 500)")
    parser.add_argument("--batch-size", type=int, default=64, help="masks per UNet call in the batched run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.ckpt:
        from diffprobe.commands.source import load_explain_model, resolve

        model, _ = load_explain_model(resolve(args.ckpt).newest, device=args.device)
        if model.conditional:
            raise SystemExit("give an unconditional checkpoint (the benchmark times the UNet, not prompts)")
        name = args.ckpt
    else:
        unet = build_unet(args.preset, conditional=False, image_size=args.image_size).to(args.device)
        model = from_parts(unet, build_scheduler().config)
        name = args.preset
    step = explain_step(model, num_inference_steps=20, step=15)
    df_rise(model, step, num_masks=min(args.masks, args.batch_size), batch_size=args.batch_size)  # warm-up
    batched, batched_map = timed(model, step, args.masks, args.batch_size, args.repeats)
    single, single_map = timed(model, step, args.masks, 1, args.repeats)
    result = {
        "benchmark": "rise",
        "model": name,
        "image_size": int(step.x_t.shape[-1]),
        "device": torch.cuda.get_device_name() if model.device.type == "cuda" else "cpu",
        "masks": args.masks,
        "batch_size": args.batch_size,
        "batched_s": round(batched, 4),
        "one_mask_per_call_s": round(single, 4),
        "speedup": round(single / batched, 2),
        "max_abs_saliency_difference": float((batched_map - single_map).abs().max()),
    }
    print(f"DF-RISE, {args.masks} masks on {name}: batched {batched:.3f} s, one mask per call {single:.3f} s -> {single / batched:.1f}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
