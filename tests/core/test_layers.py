"""The layers hold: the core (everything outside diffprobe.training and diffprobe.commands) never
loads Lightning, neither when it is imported nor when it loads a probe set and a checkpoint, and
no core module reaches into the training or command layer, at import time or inside a function."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from helpers import REPO

PACKAGE = REPO / "diffprobe"
UPPER_LAYERS = ("diffprobe.training", "diffprobe.commands")


def core_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts == ("diffprobe", "__init__") or parts[1] in ("training", "commands", "configs"):
            continue  # the package root is the public facade over every layer (lazy names)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_no_core_module_imports_lightning_or_an_upper_layer_even_inside_a_function():
    offenders = []
    for name in core_modules():
        path = PACKAGE.parent / (name.replace(".", "/") + (".py" if not (PACKAGE.parent / name.replace(".", "/")).is_dir() else "/__init__.py"))
        for node in ast.walk(ast.parse(path.read_text())):
            imported = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for module in imported:
                if module.split(".")[0] in ("lightning", "pytorch_lightning") or module.startswith(UPPER_LAYERS):
                    offenders.append(f"{name}:{node.lineno} imports {module}")
    assert not offenders, offenders


def test_the_core_loads_a_probe_set_and_a_checkpoint_without_lightning(conditional_run, tmp_path):
    from diffprobe.data.probe_set import ProbeSet
    from helpers import shapes_data

    data = shapes_data(heldout_size=20)
    ProbeSet.from_dataset(data.heldout_dataset(), data.concepts, size=12, timesteps=[0, 500], seed=0).save(tmp_path / "probe_set.pt")
    checkpoint = conditional_run / "checkpoints/last.ckpt"  # the shared 2-step run (conftest.py), its caption encoder too
    code = f"""
import importlib, json, sys
for name in {core_modules()!r}:
    importlib.import_module(name)
from diffprobe.data.probe_set import ProbeSet
from diffprobe.diffusion.model import load_checkpoint
probe_set = ProbeSet.load({str(tmp_path / "probe_set.pt")!r})
model = load_checkpoint({str(checkpoint)!r}, "ema")
raw = load_checkpoint({str(checkpoint)!r}, "raw")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning") or m.startswith({UPPER_LAYERS!r}))
print(json.dumps({{"loaded": loaded, "images": len(probe_set), "step": model.step, "differ": any((a != b).any().item() for a, b in zip(model.unet.parameters(), raw.unet.parameters()))}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], "the core loaded the training layer or Lightning"
    assert report["images"] == 12 and report["step"] == 2
    assert report["differ"], "the EMA and the raw weights are two different sets after two steps"


@pytest.mark.parametrize("name", ["diffprobe", "diffprobe.commands.probe"])
def test_import_is_light(name):
    code = f"import sys, {name}; print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr[-1000:]


def test_the_public_api_lists_every_name_once():
    import diffprobe

    assert sorted(diffprobe.__all__) == diffprobe.__all__ and len(set(diffprobe.__all__)) == len(diffprobe.__all__)
    for name in ("ProbeSet", "DiffusionModel", "load_checkpoint", "capture_features", "df_rise", "ProbeMonitor"):
        assert name in diffprobe.__all__ and getattr(diffprobe, name) is not None
