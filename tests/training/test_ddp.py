"""Two-process DDP on the CPU (gloo) with the quick start's callbacks: one run directory, one
event file, every tag logged once per step, an export, and probes like the one-process run's; and
SIGTERM to every rank or to rank 0 alone: both ranks exit 143 with one last.ckpt, and the resume
equals the uninterrupted run bit for bit."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from diffprobe.io.loading import safe_load
from faults import TINY_CONFIG_RUN, tiny_run_config, train, train_ranks
from helpers import read_events


def _probe_accuracy(run) -> torch.Tensor:
    state = next(v for k, v in safe_load(run / "checkpoints/last.ckpt")["callbacks"].items() if k.startswith("ProbeMonitor"))
    return state["history"][-1]["accuracy"]


# The same total batch: 2 processes x 4 images against 1 process x 8 (conftest's tiny_config_run).
DDP = ("--config", "tiny.yaml", "--data.init_args.batch_size", "4")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """The tiny config under two-process DDP, uninterrupted, started by Lightning's own launcher."""
    ddp = tmp_path_factory.mktemp("ddp")
    tiny_run_config(ddp / "tiny.yaml", **TINY_CONFIG_RUN)
    result = train(ddp, *DDP, "--trainer.devices", "2", "--trainer.strategy", "ddp", env={"DIFFPROBE_TEST_CHECKSUMS": str(ddp)}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return ddp


def test_two_process_ddp_writes_one_clean_run(ddp_run, tiny_config_run):
    ddp = ddp_run
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


@pytest.mark.slow  # three 2-process runs: about 40 s alone, and it takes both cores from the other worker
def test_sigterm_to_every_rank_or_rank_0_alone_stops_both_and_resumes_bit_for_bit(ddp_run, tmp_path):
    # Ranks started as a cluster launcher starts them (one process each), so each exit status is seen.
    # Checkpoints every 2 steps: the last.ckpt of step 5 and of step 3 are RunSafety's.
    for name, step, ranks in (("every", 5, None), ("rank0", 3, "0")):
        work = tmp_path / name
        work.mkdir()
        tiny_run_config(work / "tiny.yaml", **TINY_CONFIG_RUN)
        env = {"DIFFPROBE_TEST_TERM_AT": str(step), **({"DIFFPROBE_TEST_TERM_RANKS": ranks} if ranks else {})}
        results = train_ranks(work, *DDP, env=env)
        assert [r.returncode for r in results] == [128 + signal.SIGTERM] * 2, results[0].stderr[-3000:] + results[1].stderr[-3000:]
        checkpoints = work / "runs/tiny/version_0/checkpoints"
        assert sorted(p.name for p in checkpoints.glob("last*")) == ["last.ckpt"]
        assert safe_load(checkpoints / "last.ckpt")["global_step"] == step, "both ranks stopped at the signalled step"
        assert not (work / "runs/tiny/version_1").exists()

    # The run stopped on every rank at step 5 continues to step 8 as if it had never stopped.
    results = train_ranks(tmp_path / "every", *DDP, "--ckpt_path", "last")
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-3000:]
    final = safe_load(tmp_path / "every/runs/tiny/version_0/checkpoints/last.ckpt")
    reference = safe_load(ddp_run / "runs/tiny/version_0/checkpoints/last.ckpt")
    assert final["global_step"] == reference["global_step"] == 8
    different = [k for k, v in final["state_dict"].items() if not torch.equal(v, reference["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted DDP run, e.g. {different[:3]}"
    assert torch.equal(_probe_accuracy(tmp_path / "every/runs/tiny/version_0"), _probe_accuracy(ddp_run / "runs/tiny/version_0"))
