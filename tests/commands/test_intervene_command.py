"""probe.py intervene end to end on the shared tiny runs (conftest.py): the table, figures and
TensorBoard it writes, reruns that measure nothing twice, a Stable Diffusion folder (images only), and
clear refusals before any sampling. The concept reader itself: intervene/test_reader.py."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from diffprobe.commands.probe import probe_main
from diffprobe.data.shapes import CONCEPTS
from diffprobe.io.runs import checkpoint_step
from helpers import READER, read_events, refusal

FAST = ["--num_captions", "4", "--steps", "4", *READER, "--batch_size", "8"]
A = "a large red solid circle at the top left on a navy background"


@pytest.fixture(scope="module")
def probed_run(unconditional_run, tmp_path_factory):
    """A copy of the shared unconditional run with probe.py linear's results in <run>/probes."""
    run = Path(shutil.copytree(unconditional_run, tmp_path_factory.mktemp("probed") / "runs/test/version_0"))
    probe_main(["linear", "--ckpt", str(run), "--num_images", "40", "--timesteps", "[10, 50, 90]", "--method", "ridge"])
    return run


def _rows(folder):
    with (folder / "intervene.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_switch_over_a_run_writes_curves_lock_in_and_tensorboard_once(conditional_run, capsys):
    args = ["intervene", "--ckpt", str(conditional_run), "--concepts", "[shape, size]", "--switch_times", "[0, 50, 99]", *FAST]
    folder = probe_main(args)
    assert folder == conditional_run / "intervene"
    rows = _rows(folder)
    # Every trained step=N.ckpt of the run (steps 1 and 2; the step-0 weights decide nothing and are
    # passed over, last.ckpt is a copy of step 2) x 2 concepts x 3 t_s.
    steps = sorted(checkpoint_step(p) for p in (conditional_run / "checkpoints").glob("step=*.ckpt") if checkpoint_step(p) > 0)
    assert steps == [1, 2] and (conditional_run / "checkpoints" / "step=000000.ckpt").is_file()
    assert sorted({(r["checkpoint"], int(r["step"])) for r in rows}) == [(f"step={s:06d}.ckpt", s) for s in steps]
    assert len(rows) == len(steps) * 2 * 3
    for r in rows:
        assert int(r["n"]) == 4 and 0 <= float(r["ci_low"]) <= float(r["rate"]) <= float(r["ci_high"]) <= 1
        assert float(r["rate"]) == int(r["successes"]) / 4
    summary = json.loads((folder / "intervene.json").read_text())["summary"]
    assert set(summary["reader"]["accuracy"]) == set(CONCEPTS)
    assert set(summary["lock_in"]["ema"]["step=000002.ckpt"]["concepts"]) == {"shape", "size"}
    assert summary["settings"]["switch"]["switch_times"] == [0, 50, 99]
    for name in ("cis_ema.png", "t_lock_over_training_ema.png", "concept_reader.pt", "examples/step000002_ema_switch_shape.png"):
        assert (folder / name).is_file(), name
    events = read_events(conditional_run)
    assert [e.step for e in events.Scalars("intervene/shape/t_lock")] == steps
    assert "intervene/size/cis" in events.Tags()["images"]
    out = capsys.readouterr().out
    assert "t_lock" in out and "reader acc" in out  # the terminal table

    # A rerun measures nothing: same rows, no new TensorBoard points, the reader reused.
    reader_time = (folder / "concept_reader.pt").stat().st_mtime_ns
    probe_main(args)
    assert _rows(folder) == rows
    assert [e.step for e in read_events(conditional_run).Scalars("intervene/shape/t_lock")] == steps
    assert (folder / "concept_reader.pt").stat().st_mtime_ns == reader_time
    # last.ckpt is a copy of the newest step=N.ckpt: measured already, under that name.
    probe_main(["intervene", "--ckpt", str(conditional_run / "checkpoints" / "last.ckpt"), *args[3:]])
    assert _rows(folder) == rows
    assert "already measured as step=000002.ckpt" in capsys.readouterr().err
    # Other settings into the same folder are refused, not mixed in.
    message = refusal([*args[:-len(FAST)], *FAST[:-2], "--batch_size", "8", "--switch_times", "[0, 99]"], capsys)
    assert "other settings" in message and "switch_times" in message


def test_switch_beside_probe_results_shows_learned_and_decodable_t(conditional_run, tmp_path, capsys):
    run = Path(shutil.copytree(conditional_run, tmp_path / "runs/test/version_0", ignore=shutil.ignore_patterns("intervene")))
    probe_main(["linear", "--ckpt", str(run / "checkpoints" / "step=000002.ckpt"), "--num_images", "40", "--timesteps", "[10, 50, 90]", "--method", "ridge"])
    capsys.readouterr()
    folder = probe_main(["intervene", "--ckpt", str(run / "checkpoints" / "step=000002.ckpt"), "--concepts", "[shape, size]", "--switch_times", "[0, 99]", *FAST])
    compared = json.loads((folder / "intervene.json").read_text())["summary"]["decodable_vs_decided"]
    probes = list(csv.DictReader((run / "probes" / "probes.csv").open()))
    for concept in ("shape", "size"):
        mine = [r for r in probes if r["concept"] == concept and r["step"] == "2" and r["weights"] == "ema"]
        learned = [int(r["t"]) for r in mine if r["learned"] == "True"]
        decodable = [int(r["t"]) for r in mine if r["significant"] == "True"]
        assert compared[concept]["learned_up_to_t"] == (max(learned) if learned else None), concept
        assert compared[concept]["decodable_up_to_t"] == (max(decodable) if decodable else None), concept
        assert compared[concept]["probe_step"] == 2
    assert (folder / "decodable_vs_decided_ema.png").is_file()
    assert "learned up to t" in capsys.readouterr().out


def test_steer_uses_the_runs_probe_results_and_a_random_control(probed_run, tmp_path):
    out = tmp_path / "steer"
    args = ["intervene", "--mode", "steer", "--ckpt", str(probed_run / "checkpoints" / "last.ckpt"), "--out", str(out), "--concepts", "background_colour",
            "--alphas", "[0, 2]", "--windows", "[[0, 50], [50, 100]]", "--probes", str(probed_run / "probes"), *FAST]  # fmt: skip
    probe_main(args)
    rows = _rows(out)
    assert sorted({(r["variant"], r["alpha"], r["window_start"]) for r in rows}) == [
        (v, a, w) for v in ("probe", "random") for a in ("0.0", "2.0") for w in ("0", "50")
    ]
    steer = json.loads((out / "intervene.json").read_text())["summary"]["steer"]["ema"]["last.ckpt"]["concepts"]["background_colour"]
    assert (steer["source"], steer["target"]) == ("black", "navy")
    assert (steer["pool"], steer["method"]) == ("mean", "ridge"), "refitted as probe.py linear fitted it (--method ridge)"
    assert steer["t"] in (10, 50, 90) and steer["spread"] > 0
    # alpha = 0 is the unsteered image in both variants and every window.
    assert len({(r["successes"], r["others_kept"]) for r in rows if r["alpha"] == "0.0"}) == 1
    assert all(float(r["others_kept"]) == 1.0 for r in rows if r["alpha"] == "0.0")
    assert (out / "steer" / "step000001_ema_background_colour.png").is_file()
    probe_main(args)  # a rerun measures nothing and keeps the probe cell it steered with
    assert _rows(out) == rows
    assert json.loads((out / "intervene.json").read_text())["summary"]["settings"]["steer"]["probes"]["background_colour"]["t"] == steer["t"]


def test_switch_on_stable_diffusion_writes_the_switched_images(tiny_sd, tmp_path):
    out = tmp_path / "sd"
    probe_main(["intervene", "--ckpt", str(tiny_sd), "--out", str(out), "--pairs", "[[a photo of a cat, a photo of a dog], [a red car, a blue car]]",
                "--steps", "3", "--switch_times", "[0, 500, 999]"])  # fmt: skip
    saved = torch.load(out / "examples" / "step000000_ema_switch_pairs.pt")
    assert saved["images"].shape[:2] == (3, 2) and saved["second"] == ["a photo of a dog", "a blue car"]
    # t_s = 0 never switches and t_s = 999 switches at the first step: the two differ.
    assert not torch.equal(saved["images"][0], saved["images"][2])
    assert not (out / "intervene.csv").exists() or _rows(out) == []


def test_bad_input_is_refused_before_anything_is_sampled(conditional_run, probed_run, tmp_path, capsys):
    out = tmp_path / "never"
    base = ["intervene", "--ckpt", str(conditional_run), "--out", str(out), *FAST]
    cases = {
        "not a ConceptShapes caption": [*base, "--pairs", "[[a red circle, a blue circle]]"],
        "exactly one concept": [*base, "--pairs", f"[[{A}, {A.replace('red', 'blue').replace('large', 'small')}]]"],
        "not in the data": [*base, "--concepts", "[hue]"],
        "t_s must be in [0, 100]": [*base, "--switch_times", "[0, 101]"],
        "is not a file": [*base, "--reader", str(tmp_path)],
        "steering settings": [*base, "--target", "navy"],
        "needs a conditional model": ["intervene", "--ckpt", str(probed_run), "--out", str(out), *FAST],
        "no 'ema' probe results": ["intervene", "--mode", "steer", "--ckpt", str(conditional_run), "--out", str(out), *FAST],
        "is not a value of 'background_colour'": ["intervene", "--mode", "steer", "--ckpt", str(probed_run), "--out", str(out), "--concepts",
                                                  "background_colour", "--target", "purple", *FAST],  # fmt: skip
        "each must be [start, end)": ["intervene", "--mode", "steer", "--ckpt", str(probed_run), "--out", str(out), "--windows", "[[50, 20]]", *FAST],
        "hold none of the sampler's timesteps": ["intervene", "--mode", "steer", "--ckpt", str(probed_run), "--out", str(out), "--windows", "[[76, 99]]", *FAST],
    }
    for expected, args in cases.items():
        assert expected in refusal(args, capsys), expected
        assert not out.exists(), expected  # refused before the reader or any image was made
