"""Training throughput (images/s) of diffprobe against the diffusers example loop, in one process.

Baseline: the loop of diffusers' ``examples/unconditional_image_generation`` reduced to its core
(UNet2DModel, DDPMScheduler.add_noise, MSE on eps, AdamW, EMAModel, bf16 autocast on GPU), fed
from GPU-resident tensors. Candidates: diffprobe's ``DiffusionModule`` under Lightning's Trainer
on ConceptShapes with the DataModule: eager, compiled, and compiled with CUDA graphs (GPU), each
with the full observation stack (OnlineProbes, ProbeMonitor every 500, AttentionRecorder,
PredictionEvolution, SampleGrid) on and off. Each number is the median over timed steps after
warm-up; ``<variant>_probes_cost`` is 1 - on / off; ratios are against the baseline.

The periodic observers fire every 500 steps, more than a short benchmark runs: each one's
evaluation is timed where it runs anyway (at the start and the end of fit; the end's, warm, is
reported as ``<variant>_observer_s``), and ``<variant>_probes_on_amortized_img_s`` spreads them over
their intervals: batch / (median step + sum of evaluation seconds / 500).

A run-level on / off comparison cannot resolve a cost of a few percent on a machine whose speed
drifts by 10% from one fit to the next (a shared CPU). ``<variant>_online_probes_step_cost`` is
measured step by step instead: the DiffusionModule's whole step with and without OnlineProbes'
heads, alternating, same weights, same batches. ``<variant>_stack_cost_stepwise`` adds the periodic
observers' seconds per 500 steps to it: 1 - off step / (off step x (1 + step cost) + seconds / 500).

    python benchmarks/train_throughput.py --preset ddpm-cifar10 --batch-size 128 --steps 60   # GPU
    python benchmarks/train_throughput.py --preset tiny --image-size 16 --batch-size 32 --steps 40 --workers 0 --repeats 3  # CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from itertools import islice

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from _timing import StepTimer, sync
from diffusers.training_utils import EMAModel

from diffprobe.diffusion import ddpm
from diffprobe.diffusion.unet import build_unet
from diffprobe.training.datamodules import ConceptShapesDataModule
from diffprobe.training.module import DiffusionModule


def baseline_loop(args, device: torch.device) -> float:
    """The diffusers example loop; returns images/s."""
    unet = build_unet(args.preset, conditional=False, image_size=args.image_size).to(device)
    scheduler = ddpm.build_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, foreach=True)
    ema.to(device)
    images = torch.rand(args.batch_size * 8, 3, args.image_size, args.image_size, device=device) * 2 - 1
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        x0 = images[(step % 8) * args.batch_size : (step % 8 + 1) * args.batch_size]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=device)
        x_t = scheduler.add_noise(x0, noise, t)
        with autocast:
            loss = F.mse_loss(unet(x_t, t).sample.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return args.batch_size / statistics.median(times)


VARIANTS = {"eager": (False, None), "compiled": (True, None), "cudagraphs": (True, "reduce-overhead")}


EVERY_N_STEPS = 500


class ObserverClock:
    """Times each periodic observer's evaluations (synchronised), keeping the last one's seconds."""

    def __init__(self, callbacks: list[pl.Callback], device: torch.device):
        self.seconds: dict[str, float] = {}
        for callback in callbacks:
            if hasattr(callback, "observe"):
                callback.observe = self._timed(callback.observe, type(callback).__name__, device)

    def _timed(self, observe, name: str, device: torch.device):
        def timed(trainer, pl_module, step):
            sync(device)
            start = time.perf_counter()
            observe(trainer, pl_module, step)
            sync(device)
            self.seconds[name] = time.perf_counter() - start

        return timed


def observers(args) -> list[pl.Callback]:
    """The full observation stack at configs/cifar10_ddpm.yaml's intervals (ProbeMonitor every 500)."""
    from diffprobe.training.callbacks import AttentionRecorder, OnlineProbes, PredictionEvolution, ProbeMonitor, SampleGrid

    return [  # the configs' order
        SampleGrid(every_n_steps=EVERY_N_STEPS, num_images=16, num_inference_steps=100),
        OnlineProbes(log_every_n_steps=50),
        ProbeMonitor(every_n_steps=EVERY_N_STEPS, num_images=300, batch_size=500, method="ridge"),
        AttentionRecorder(every_n_steps=EVERY_N_STEPS, num_images=4),
        PredictionEvolution(every_n_steps=EVERY_N_STEPS, num_images=8),
    ]


def lightning_run(args, device: torch.device, variant: str, probes: bool, check_finite_every: int) -> tuple[float, float, float, dict[str, float]]:
    """diffprobe's DiffusionModule under Lightning; returns images/s inside the step (data loading
    excluded, as for the baseline), over the wall clock of the timed steps (the DataModule
    included), with the periodic observers amortized over their interval, and each observer's
    seconds per evaluation."""
    import tempfile

    from lightning.pytorch.loggers import TensorBoardLogger

    compile, mode = VARIANTS[variant]
    data = ConceptShapesDataModule(image_size=args.image_size, train_size=max(args.batch_size * 16, 2048), batch_size=args.batch_size, num_workers=args.workers)
    module = DiffusionModule(
        preset=args.preset,
        image_size=args.image_size,
        warmup_steps=0,
        channels_last=compile and device.type == "cuda",
        compile=compile,
        compile_mode=mode or args.compile_mode,
        check_finite_every_n_steps=check_finite_every,
    )
    timer = StepTimer(args.warmup)
    watching = observers(args) if probes else []
    clock = ObserverClock(watching, device)
    with tempfile.TemporaryDirectory() as logs:
        trainer = pl.Trainer(
            accelerator=device.type,
            devices=1,
            precision="bf16-mixed" if device.type == "cuda" else "32-true",
            max_steps=args.warmup + args.steps,
            gradient_clip_val=1.0,
            logger=TensorBoardLogger(logs, name="bench"),  # a real run logs, observers or not
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer, *watching],
            log_every_n_steps=50,
        )
        trainer.fit(module, datamodule=data)
    step = statistics.median(timer.times)
    amortized = args.batch_size / (step + sum(clock.seconds.values()) / EVERY_N_STEPS)
    return args.batch_size / step, timer.wall_images_per_second(args.batch_size), amortized, clock.seconds


def online_probes_step_cost(args, device: torch.device, variant: str) -> float:
    """What OnlineProbes add to one training step, measured step by step: two DiffusionModules of
    the same weights, one with heads (its compiled forward hands out the pooled features), run
    their whole step (forward, heads, backward, clipping, AdamW, EMA) alternately, so the two
    medians see the same machine at the same moments. A run-level comparison cannot see a 2%
    cost on a machine whose speed drifts 10% from one fit to the next."""
    compile, mode = VARIANTS[variant]
    data = ConceptShapesDataModule(image_size=args.image_size, train_size=args.batch_size * 8, batch_size=args.batch_size, num_workers=0)
    data.setup("fit")
    batches = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()} for b in islice(data.train_dataloader(), 8)]
    steps = {}
    for probes in (False, True):
        torch.manual_seed(0)
        module = DiffusionModule(preset=args.preset, image_size=args.image_size, warmup_steps=0, channels_last=compile and device.type == "cuda",
                                 compile=compile, compile_mode=mode or args.compile_mode, run_safety=False).to(device)
        if probes:
            from diffprobe.capture import default_layers

            module.attach_probe_heads(default_layers(module.unet), "mean", [len(v) for v in data.concepts.values()], 10, 1e-3)
        # Without a Trainer global_step stays 0, so the NaN check (a host sync) would run every step
        # instead of every --check-finite-every: leave it out of both.
        module.nonfinite.raise_if_seen = lambda what, trainer=None: None
        module.configure_model()
        optimizer = module.configure_optimizers()["optimizer"]
        module.on_train_start()  # lists the trained parameters once, as in a fit
        accuracy = None
        if probes:  # OnlineProbes' per-step bookkeeping (its every-50-steps logging is left out)
            from diffprobe.diffusion.metrics import CellAccuracy

            accuracy = CellAccuracy((len(module.feature_taps.layers), 10, len(data.concepts))).to(device)
        steps[probes] = _manual_step(module, optimizer, device, accuracy)
    times = {False: [], True: []}
    for index in range(args.warmup + args.steps):
        for probes in (False, True) if index % 2 else (True, False):  # neither always goes first
            sync(device)
            start = time.perf_counter()
            steps[probes](batches[index % len(batches)])
            sync(device)
            if index >= args.warmup:
                times[probes].append(time.perf_counter() - start)
    return statistics.median(times[True]) / statistics.median(times[False]) - 1


def _manual_step(module: DiffusionModule, optimizer: torch.optim.Optimizer, device: torch.device, accuracy=None):
    """The DiffusionModule's training step as Lightning runs it under bf16-mixed (GPU) or 32-true
    (CPU), with OnlineProbes' accuracy update when ``accuracy`` is given."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(batch) -> None:
        with autocast, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step logs; no Trainer here takes it
            out = module.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)  # Lightning's order: the step's forward, zero_grad, backward
        (out["loss"] if isinstance(out, dict) else out).backward()
        torch.nn.utils.clip_grad_norm_(module.trained_parameters(), 1.0)  # as both modules clip under Lightning
        optimizer.step()
        module.ema.step(module.trained_parameters())
        if accuracy is not None:
            accuracy.update(out["probe_correct"], out["probe_bucket"])

    return step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ddpm-cifar10")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=1, help="off / on pairs per variant (medians reported)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--variants", default=None, help="comma-separated of eager, compiled, cudagraphs (default: all the device runs)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode of the compiled variant, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--check-finite-every", type=int, default=100, help="DiffusionModule.check_finite_every_n_steps (the configs' 100)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    variants = args.variants.split(",") if args.variants else (list(VARIANTS) if device.type == "cuda" else ["eager", "compiled"])
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", **vars(args)}
    results["baseline_img_s"] = baseline_loop(args, device)
    for variant in variants:
        # Off and on alternate, --repeats pairs: a shared machine's speed drifts by more than the
        # cost measured, so each figure is the median over the pairs and the cost the median of
        # the pairs' own costs.
        runs = {False: [], True: []}
        for _ in range(args.repeats):
            for probes in (False, True):
                runs[probes].append(lightning_run(args, device, variant, probes, args.check_finite_every))
        for probes, state in ((False, "off"), (True, "on")):
            results[f"{variant}_probes_{state}_img_s"] = statistics.median(r[0] for r in runs[probes])
            results[f"{variant}_probes_{state}_wall_img_s"] = statistics.median(r[1] for r in runs[probes])
        results[f"{variant}_probes_on_amortized_img_s"] = statistics.median(r[2] for r in runs[True])
        results[f"{variant}_observer_s"] = {name: statistics.median(r[3][name] for r in runs[True]) for name in runs[True][0][3]}
        results[f"{variant}_probes_cost"] = statistics.median(1 - on[0] / off[0] for off, on in zip(runs[False], runs[True]))
        try:  # outside Lightning (never run on a GPU yet): a failure here must not lose the figures above
            step_cost = online_probes_step_cost(args, device, variant)
        except Exception as error:  # noqa: BLE001
            step_cost, results[f"{variant}_online_probes_step_cost_error"] = None, repr(error)[:500]
        results[f"{variant}_online_probes_step_cost"] = step_cost
        if step_cost is not None:
            off_step = args.batch_size / results[f"{variant}_probes_off_img_s"]
            on_step = off_step * (1 + step_cost) + sum(results[f"{variant}_observer_s"].values()) / EVERY_N_STEPS
            results[f"{variant}_stack_cost_stepwise"] = 1 - off_step / on_step
        results[f"{variant}_stack_cost_amortized"] = statistics.median(1 - on[2] / off[0] for off, on in zip(runs[False], runs[True]))
        print(json.dumps({**results, "partial": True}), flush=True)  # a run cut short by a time limit keeps what it measured
    for key in [k for k in results if k.endswith("_img_s") and k != "baseline_img_s"]:
        results[key.replace("_img_s", "_ratio")] = results[key] / results["baseline_img_s"]
    print(json.dumps(results))  # one JSON line, last, so runs can be compared
    return results


if __name__ == "__main__":
    main()
