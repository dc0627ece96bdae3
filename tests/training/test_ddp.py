"""Two-process DDP on the CPU (gloo) with the quick start's callbacks: one run directory, one
event file, every tag logged once per step, an export, and probes like the one-process run's."""

from __future__ import annotations

import json

import torch

from diffprobe.io.loading import safe_load
from faults import TINY_CONFIG_RUN, tiny_run_config, train
from helpers import read_events


def _probe_accuracy(run) -> torch.Tensor:
    state = next(v for k, v in safe_load(run / "checkpoints/last.ckpt")["callbacks"].items() if k.startswith("ProbeMonitor"))
    return state["history"][-1]["accuracy"]


def test_two_process_ddp_writes_one_clean_run(tiny_config_run, tmp_path):
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    # The same total batch: 2 processes x 4 images against 1 process x 8 (conftest's tiny_config_run).
    tiny_run_config(ddp / "tiny.yaml", **TINY_CONFIG_RUN)
    env = {"DIFFPROBE_TEST_CHECKSUMS": str(ddp)}
    result = train(ddp, "--config", "tiny.yaml", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.init_args.batch_size", "4", env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # Gradients were synchronised: both processes end with the same weights.
    assert json.loads((ddp / "rank0.json").read_text()) == json.loads((ddp / "rank1.json").read_text())

    runs = sorted(p.relative_to(ddp) for p in (ddp / "runs").glob("*/*"))
    assert [str(p) for p in runs] == ["runs/tiny/version_0"], "one run directory, not one per process"
    run = ddp / "runs/tiny/version_0"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert (run / "export/unet/config.json").exists()
    final = safe_load(run / "checkpoints/last.ckpt")
    assert final["global_step"] == 8 and final["ema"]["optimization_step"] == 8
    events = read_events(run)
    for tag in events.Tags()["scalars"]:
        steps = [e.step for e in events.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag} logged more than once per step: {steps}"
    assert [e.step for e in events.Images("samples/ema")] == [0, 2, 4, 6, 8]
    difference = (_probe_accuracy(run) - _probe_accuracy(tiny_config_run)).abs().mean()
    print(f"\nDDP vs one process: ProbeMonitor accuracy mean |diff| {float(difference):.4f}")
    assert difference < 0.1
