"""probe.py linear on a run: CSV/JSON rows, heatmaps, emergence, TensorBoard at checkpoint steps,
idempotent reruns, the init baseline, and clear errors."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from diffprobe.commands.probe import probe_main
from diffprobe.training.callbacks import ProbeMonitor
from helpers import make_module, make_trainer, read_events, refusal, shapes_data

LAYERS = ["down_blocks.1", "mid_block"]


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory) -> Path:
    """A 4-step run (checkpoints at steps 0, 2, 4) whose ProbeMonitor saved the run's probe set."""
    root = tmp_path_factory.mktemp("monitored")
    monitor = ProbeMonitor(every_n_steps=100, num_images=24, timesteps=[0, 50, 99], layers=LAYERS, method="ridge", heatmaps=False)
    trainer = make_trainer(root, max_steps=4, every_n_steps=2, callbacks=[monitor])
    trainer.fit(make_module(), datamodule=shapes_data(heldout_size=30))
    return root / "runs/test/version_0"


@pytest.fixture
def run(monitored_run, tmp_path) -> Path:
    """A private copy of the monitored run: probe.py linear writes into it."""
    return Path(shutil.copytree(monitored_run, tmp_path / "runs/test/version_0"))


def test_linear_on_a_run_writes_everything_and_skips_done_cells(run, capsys, monkeypatch):
    args = ["linear", "--ckpt", str(run), "--layers", json.dumps(LAYERS), "--method", "ridge", "--device", "cpu"]
    out = probe_main(args)
    assert out == run / "probes"
    rows = list(csv.DictReader((out / "probes.csv").open()))
    # step=0 (the init weights), step=2 and step=4 (last.ckpt repeats step 4 and is skipped) x 2 layers x 3 t x 6 concepts
    assert len(rows) == 3 * 2 * 3 * 6
    assert {r["step"] for r in rows} == {"0", "2", "4"}
    assert set(rows[0]) >= {"accuracy", "chance", "control_accuracy", "selectivity", "p_value", "significant", "ci_low", "ci_high", "n",
                            "input_accuracy", "init_accuracy", "gain", "gain_p_value", "learned", "pool", "method"}  # fmt: skip
    at_init = [r for r in rows if r["step"] == "0"]
    assert all(float(r["gain"]) <= 0 and r["learned"] == "False" and float(r["gain_p_value"]) == 1.0 for r in at_init), "init vs itself"
    assert {(r["pool"], r["method"]) for r in rows} == {("mean", "ridge")}
    assert json.loads((out / "probes.json").read_text())["rows"][0]["concept"] == rows[0]["concept"]
    assert (out / "heatmaps" / "step000002_ema_shape.png").exists() and (out / "heatmaps" / "step000002_ema_shape_gain.png").exists()
    assert (out / "decodability_ema.png").exists()
    summary = json.loads((out / "emergence.json").read_text())
    assert set(summary) == {"background_colour", "object_colour", "shape", "size", "position", "texture"}
    assert set(summary["shape"]["first_step_decodable_by_t"]) == {"0", "50", "99"} and "max_learned_t" in summary["shape"]
    steps = sorted({e.step for e in read_events(run).Scalars("probe_ckpt/shape/mid_block/t0050/acc")})
    assert steps == [0, 2, 4]
    assert not (out / "probe_set.pt").exists(), "the run's own probe set was used, not a new one"
    assert "init baseline: the run's step-0 weights" in capsys.readouterr().err

    mtime = (out / "probes.csv").stat().st_mtime_ns
    import diffprobe.commands.linear
    import diffprobe.commands.linear_output

    loaded = []
    for module in (diffprobe.commands.linear, diffprobe.commands.linear_output):
        real_load = module.load_model
        monkeypatch.setattr(module, "load_model", lambda entry, *args, real_load=real_load: loaded.append(entry.name) or real_load(entry, *args))
    probe_main(args)
    assert (out / "probes.csv").stat().st_mtime_ns == mtime, "a rerun with nothing to do writes nothing"
    assert loaded == ["step=000000.ckpt"], "a rerun loads only the first checkpoint (for T and the block names), not the probed ones"
    monkeypatch.undo()
    events = read_events(run)
    assert [e.step for e in events.Scalars("Overview/decodable_t_ckpt/shape")] == [0, 2, 4], "the summary per checkpoint step, once"
    assert [e.step for e in events.Scalars("Overview/learned_t_ckpt/shape")] == [0, 2, 4]
    assert [e.value for e in events.Scalars("Overview/learned_t_ckpt/shape")][0] == -1, "nothing is learned at step 0"
    for name in ("decodability", "decodable_t", "learned_t"):
        assert (out / f"{name}_ema_over_training.png").exists(), name
    before_rows = len(list(csv.DictReader((out / "probes.csv").open())))
    probe_main(["linear", "--ckpt", str(run / "checkpoints/last.ckpt"), "--layers", json.dumps(LAYERS), "--method", "ridge", "--device", "cpu"])
    assert len(list(csv.DictReader((out / "probes.csv").open()))) == before_rows, "last.ckpt is step 4, already probed"
    probe_main([*args, "--weights", "raw"])  # raw weights get their own tags, never mixed into the EMA ones
    events = read_events(run)
    assert [e.step for e in events.Scalars("probe_ckpt/shape/mid_block/t0050/acc")] == [0, 2, 4]
    assert [e.step for e in events.Scalars("probe_ckpt_raw/shape/mid_block/t0050/acc")] == [0, 2, 4]
    assert json.loads((out / "probes.json").read_text())["rows"][0]["step"] in (0, 2, 4), "rows read back keep their types"
    probe_main([*args, "--overwrite", "true"])
    assert len(list(csv.DictReader((out / "probes.csv").open()))) == 2 * len(rows)  # EMA and raw
    message = refusal([*args, "--pool", "grid2"], capsys)
    assert "--pool mean --method ridge" in message and "--overwrite true" in message, "one table, one way of fitting"
    message = refusal([*args, "--num_images", "50"], capsys)
    assert "--num_images would make a new probe set" in message and "probe_set.pt" in message, "a flag that cannot take effect is refused"


def test_linear_errors_are_clear(run, tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"--ckpt .*nothing does not exist. Give a diffprobe .ckpt or run directory"):
        probe_main(["linear", "--ckpt", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match=r"--layers: UNet has no module\(s\) \['middle'\]"):
        probe_main(["linear", "--ckpt", str(run / "checkpoints/last.ckpt"), "--layers", "middle", "--device", "cpu"])
    assert "num_images" in refusal(["linear", "--ckpt", str(run), "--num_images", "5"], capsys)
    assert "heldout_fraction" in refusal(["linear", "--ckpt", str(run), "--heldout_fraction", "1.5"], capsys)
    assert "timesteps" in refusal(["linear", "--ckpt", str(run), "--timesteps", "[-1, 5]"], capsys)
    assert not (run / "probes").exists()
    (tmp_path / "foreign.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="is not a diffprobe checkpoint"):  # a clean exit naming the file
        probe_main(["linear", "--ckpt", str(tmp_path / "foreign.ckpt"), "--device", "cpu"])


def test_linear_on_a_run_without_step0_weights_says_which_baseline_is_missing(unconditional_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(unconditional_run, copy)
    (copy / "checkpoints/step=000000.ckpt").unlink()
    shutil.rmtree(copy / "probes", ignore_errors=True)
    message = refusal(["linear", "--ckpt", str(copy), "--device", "cpu", "--method", "ridge"], capsys)
    assert "no step-0 weights" in message and "init baseline is missing" in message and "--init none" in message
    assert not (copy / "probes").exists()


def test_linear_on_a_pretrained_diffusers_unet_with_a_local_data_set(tmp_path):
    from diffusers import UNet2DModel

    from helpers import TINY_UNET, write_imagefolder

    UNet2DModel(sample_size=16, **TINY_UNET).save_pretrained(tmp_path / "unet")
    data = write_imagefolder(tmp_path / "images")
    base = ["linear", "--ckpt", str(tmp_path / "unet"), "--data", str(data), "--image_column", "image", "--device", "cpu", "--method", "ridge", "--timesteps", "[0, 500]", "--heldout_fraction", "0.9"]
    out = probe_main([*base, "--num_images", "12", "--out", str(tmp_path / "probes")])
    rows = list(csv.DictReader((out / "probes.csv").open()))
    assert {r["concept"] for r in rows} == {"label"} and {r["t"] for r in rows} == {"0", "500"}
    assert {r["checkpoint"] for r in rows} == {"unet"} and (out / "probe_set.pt").exists()
    with pytest.raises(SystemExit, match=r"--data: .*concept columns \['smiling'\] not in"):
        probe_main([*base, "--concept_columns", "[smiling]", "--out", str(tmp_path / "other")])
