"""The hidden-capabilities study in one command: train the concept-signal sweep, then measure it.

    python docs/hidden_capabilities/run_study.py                 # ~2.5 h on 2 CPU cores

It trains configs/hidden_capabilities.yaml once per colour contrast (same seed and everything
else; runs/hidden_capabilities/contrast_<c>/version_0), one training at a time on one thread each,
resuming a run that was stopped (``--ckpt_path last``) and skipping one that is finished; then runs
``probe.py hidden`` on all of them, writing docs/hidden_capabilities/ (results.json, runs/*.json,
the figures). Stopped at any point, the same command goes on where it stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from jsonargparse import CLI

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "hidden_capabilities.yaml"


def finished(run: Path, max_steps: int) -> bool:
    return (run / "checkpoints" / f"step={max_steps:06d}.ckpt").is_file()


def study(contrasts: list[float] = [1.0, 0.5, 0.25], runs: str = "runs", out: str = "docs/hidden_capabilities", measure_only: bool = False) -> None:  # noqa: B006
    """Train the sweep (one run per colour contrast), then measure every run with probe.py hidden.

    Args:
        contrasts: colour contrasts of the sweep's runs (the concept signal), in (0, 1]
        runs: TensorBoard save_dir of the runs
        out: the study's output folder
        measure_only: skip training (measure the runs already there)
    """
    max_steps = int(yaml.safe_load(CONFIG.read_text())["trainer"]["max_steps"])
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    names = [f"hidden_capabilities/contrast_{c}" for c in contrasts]  # contrast_1.0, contrast_0.5, ...

    for contrast, name in zip(contrasts, names):
        run = REPO / runs / name / "version_0"
        if measure_only or finished(run, max_steps):
            continue
        print(f"run_study: training {name} (colour contrast {contrast}, {max_steps} steps)", flush=True)
        subprocess.run(
            [sys.executable, str(REPO / "train.py"), "fit", "--config", str(CONFIG), "--data.init_args.colour_contrast", str(contrast),
             "--trainer.logger.init_args.save_dir", runs, "--trainer.logger.init_args.name", name, "--trainer.logger.init_args.version", "0",
             "--ckpt_path", "last"],
            cwd=REPO, env=environment, check=True,
        )  # fmt: skip
    folders = [str(REPO / runs / name / "version_0") for name in names]
    subprocess.run([sys.executable, str(REPO / "probe.py"), "hidden", "--ckpt", yaml.safe_dump(folders, default_flow_style=True).strip(), "--out", out], cwd=REPO, env=environment, check=True)


if __name__ == "__main__":
    CLI(study)
