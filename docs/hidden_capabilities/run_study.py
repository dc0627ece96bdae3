"""The hidden-capabilities study in one command: train the concept-signal sweep, then measure it.

    python docs/hidden_capabilities/run_study.py                 # ~2.5 h on 2 CPU cores

It trains configs/hidden_capabilities.yaml once per colour contrast (same seed and everything
else; runs/hidden_capabilities/contrast_<c>/version_0), one training at a time on one thread each,
resuming a run that was stopped (``--ckpt_path last``) and skipping one that is finished; then runs
``probe.py hidden`` on all of them, writing docs/hidden_capabilities/ (results.json, runs/*.json,
the figures). The contrast-1.0 run's turn (steps 500-1,250) is then trained again from its step-500
checkpoint with a checkpoint every 50 steps (bit-exact resume: the same run, seen closer) and
measured into docs/hidden_capabilities/fine_contrast_1.0/. Stopped at any point, the same command
goes on where it stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from jsonargparse import CLI

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "hidden_capabilities.yaml"


def finished(run: Path, max_steps: int) -> bool:
    return (run / "checkpoints" / f"step={max_steps:06d}.ckpt").is_file()


def fine_run(source: Path, target: Path, contrast: float, first: int, last: int, every: int, environment: dict) -> None:
    """The stretch [first, last] of ``source`` again with a checkpoint every ``every`` steps: resumed
    from its step-``first`` checkpoint (bit-exact resume: the same weights the run had), with the
    same max_steps (the learning-rate schedule depends on it) and stopped by SIGTERM once step
    ``last`` is saved. ``target`` then gets copies of the source's step-0 (the probes' baseline)
    and step-``first`` checkpoints."""
    if not (target / "checkpoints" / f"step={last:06d}.ckpt").is_file():
        _train_stretch(source, target, contrast, first, last, every, environment)
    for step in (0, first):
        copy = target / "checkpoints" / f"step={step:06d}.ckpt"
        if not copy.is_file():
            shutil.copy2(source / "checkpoints" / copy.name, copy)


def _train_stretch(source: Path, target: Path, contrast: float, first: int, last: int, every: int, environment: dict) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    config["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = every
    config["trainer"]["logger"]["init_args"].update(save_dir=str(target.parents[1]), name=target.parent.name, version=target.name)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        yaml.safe_dump(config, file)
    stopped = target / "checkpoints" / "last.ckpt"  # a stretch stopped early resumes from it
    start = str(stopped) if stopped.is_file() else str(source / "checkpoints" / f"step={first:06d}.ckpt")
    print(f"run_study: steps {first}-{last} of {source} again, a checkpoint every {every} steps -> {target}", flush=True)
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "fit", "--config", file.name, "--data.init_args.colour_contrast", str(contrast), "--ckpt_path", start],
        cwd=REPO, env=environment,
    )  # fmt: skip
    while process.poll() is None and not (target / "checkpoints" / f"step={last:06d}.ckpt").is_file():
        time.sleep(2)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # RunSafety: last.ckpt written, clean exit
    process.wait()
    (target / "checkpoints" / "last.ckpt").unlink(missing_ok=True)  # a few steps past `last`: not part of the stretch
    Path(file.name).unlink()


def study(
    contrasts: list[float] = [1.0, 0.5, 0.25], runs: str = "runs", out: str = "docs/hidden_capabilities", measure_only: bool = False,  # noqa: B006
    fine_contrast: float | None = 1.0, fine_steps: tuple[int, int, int] = (500, 1250, 50),
) -> None:  # fmt: skip
    """Train the sweep (one run per colour contrast), then measure every run with probe.py hidden.

    Args:
        contrasts: colour contrasts of the sweep's runs (the concept signal), in (0, 1]
        runs: TensorBoard save_dir of the runs
        out: the study's output folder
        measure_only: skip training (measure the runs already there)
        fine_contrast: the run whose turn is measured again on a finer grid (None: none)
        fine_steps: (first, last, every) of that finer grid
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
    fine = REPO / runs / f"hidden_capabilities_fine/contrast_{fine_contrast}" / "version_0"
    if fine_contrast is not None and not measure_only:
        fine_run(REPO / runs / f"hidden_capabilities/contrast_{fine_contrast}" / "version_0", fine, fine_contrast, *fine_steps, environment)
    measure = [sys.executable, str(REPO / "probe.py"), "hidden", "--ckpt"]
    subprocess.run([*measure, yaml.safe_dump(folders, default_flow_style=True).strip(), "--out", out], cwd=REPO, env=environment, check=True)
    if fine_contrast is not None:  # its own folder: one run of the sweep, seen closer
        subprocess.run([*measure, str(fine), "--out", f"{out}/fine_contrast_{fine_contrast}"], cwd=REPO, env=environment, check=True)


if __name__ == "__main__":
    CLI(study)
