"""pytest's fixtures, shared by every test folder; the helpers tests import are in helpers.py.

Tests are grouped by the package they test: core/ (io, data, diffusion, capture, probes, fidelity,
report, the layer rule), explain/, intervene/, training/ (the module, callbacks, reliability, train.py's
CLI), commands/ (probe.py's commands, bad input, packaging). The tiny runs below are trained once per
session and shared: a test never changes what another reads in them (its outputs go to --out folders,
or TensorBoard tags of its own); a test that writes into a run takes ``unconditional_run_copy``.
"""

from __future__ import annotations

import os

# Set once, here, before anything imports Hugging Face (datasets and huggingface_hub read them once at
# import): tests never touch the network. Subprocesses the tests start inherit them.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

# Under pytest-xdist (`-n 2`, the README's test command) the workers share the cores: one torch
# thread each, or their thread pools spin against each other (tiny 16x16 UNets gain nothing from two).
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from diffprobe.commands.train import train_main  # noqa: E402
from diffprobe.training.datamodules import ConceptShapesDataModule  # noqa: E402
from faults import TINY_CONFIG_RUN, tiny_run_config  # noqa: E402
from helpers import shapes_data, train_tiny_run  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def reader_cache(tmp_path_factory):
    """Concept readers are cached per data configuration (fidelity.readers): in the session's own
    folder, never the user's ~/.cache, and shared by the tests of one session (tests that train a
    reader use helpers.READER, so the cache hits)."""
    folder = tmp_path_factory.mktemp("diffprobe-cache")
    previous = os.environ.get("DIFFPROBE_CACHE")
    os.environ["DIFFPROBE_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("DIFFPROBE_CACHE", None)
    else:
        os.environ["DIFFPROBE_CACHE"] = previous


@pytest.fixture
def tiny_data() -> ConceptShapesDataModule:
    return shapes_data()


@pytest.fixture(scope="session")
def unconditional_run(tmp_path_factory) -> Path:
    """A tiny unconditional ConceptShapes run of 1 step, a checkpoint every step (step=000000.ckpt,
    step=000001.ckpt, last.ckpt); read-only but for TensorBoard tags a test writes with --logdir."""
    return train_tiny_run(tmp_path_factory.mktemp("unconditional"), max_steps=1)


@pytest.fixture
def unconditional_run_copy(unconditional_run, tmp_path) -> Path:
    """A private copy of ``unconditional_run`` at <tmp_path>/runs/test/version_0, for tests that write into a run."""
    return Path(shutil.copytree(unconditional_run, tmp_path / "runs/test/version_0"))


@pytest.fixture(scope="session")
def conditional_run(tmp_path_factory) -> Path:
    """A tiny caption-conditional run of 2 steps, a checkpoint every step (steps 0, 1, 2 and last.ckpt).
    Commands that write into their run by default (fidelity, intervene, the explanation tools'
    TensorBoard events) each write their own folder or tags; tests check only their own."""
    return train_tiny_run(tmp_path_factory.mktemp("conditional"), max_steps=2, conditional=True)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny random Stable Diffusion folder (8x8 latents, 16x16 images); read-only."""
    pytest.importorskip("transformers")
    from tiny_sd import write_tiny_stable_diffusion

    return write_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_config_run(tmp_path_factory) -> Path:
    """train.py's tiny config (faults.tiny_run_config: the quick start's callbacks on a tiny UNet,
    8 steps) with TINY_CONFIG_RUN's settings, run uninterrupted in this process: the reference that
    the kill -9 and DDP tests compare with. Returns runs/tiny/version_0; read-only."""
    folder = tmp_path_factory.mktemp("tiny-config")
    tiny_run_config(folder / "tiny.yaml", **TINY_CONFIG_RUN)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        train_main(["fit", "--config", "tiny.yaml"])
    return folder / "runs/tiny/version_0"
