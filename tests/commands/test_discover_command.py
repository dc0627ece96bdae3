"""probe.py discover on a tiny run: tables, figures and TensorBoard; data without concept labels;
bad input refused before any feature is collected."""

import csv
import json
from pathlib import Path

import pytest

from diffprobe.commands.probe import probe_main
from diffprobe.training.datamodules import HFDataModule
from helpers import make_module, make_trainer, read_events, refusal, write_imagefolder

FAST = ["--layers", "[mid_block]", "--timesteps", "[1, 10]", "--sae_steps", "30", "--num_images", "40", "--device", "cpu"]


def _rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_discover_over_a_run_writes_dictionaries_concept_matches_and_tensorboard(unconditional_run_copy, capsys):
    run = unconditional_run_copy
    out = probe_main(["discover", "--ckpt", str(run), *FAST])
    assert out == run / "discover"
    dictionaries = _rows(out / "dictionaries.csv")
    # x_t's own dictionaries (step -1) and, at steps 0 and 1 (last.ckpt repeats step 1), mid_block at t = 1 and 10
    assert sorted((r["step"], r["layer"], r["t"]) for r in dictionaries) == sorted(
        [("-1", "input", "1"), ("-1", "input", "10")] + [(s, "mid_block", t) for s in ("0", "1") for t in ("1", "10")]
    )
    for r in dictionaries:
        assert 0 <= float(r["dead_share"]) <= 1 and float(r["mean_l0"]) <= 8 and float(r["explained_variance"]) <= 1
    assert {r["persist_share"] for r in dictionaries if r["step"] == "0"} == {""}, "nothing before the first checkpoint"
    found = _rows(out / "discover.csv")
    values = {(r["concept"], r["value"]) for r in found}
    assert ("background_colour", "navy") in values and ("texture", "stripes") in values
    unet_rows = [r for r in found if r["layer"] == "mid_block"]
    assert len(unet_rows) == 2 * 2 * len(values)  # steps x t x concept values
    for r in unet_rows:
        assert 0 <= float(r["auroc"]) <= 1 and r["input_auroc"] != "" and int(r["born_step"]) in (0, 1)
        assert int(r["t_low"]) <= int(r["t"]) <= int(r["t_high"])
        assert r["beyond_input"] == str(r["found"] == "True" and float(r["input_auroc"]) < 0.9)
    summary = json.loads((out / "discover.json").read_text())["summary"]
    assert set(summary["concepts"]["shape"]["best_auroc"]) == {"0", "1"}
    assert (out / "best_auroc_ema.png").is_file() and (out / "features/step000001_ema_mid_block_t0010.png").is_file()
    events = read_events(run)
    assert [e.step for e in events.Scalars("discover/shape/best_auroc")] == [0, 1]
    assert "discover/features/mid_block/t0010" in events.Tags()["images"]
    printed = capsys.readouterr().out
    assert "concepts found without labels" in printed and "expl. var." in printed
    # The same command again: nothing left to measure, the tables as they were.
    before = _rows(out / "discover.csv")
    probe_main(["discover", "--ckpt", str(run), *FAST])
    assert _rows(out / "discover.csv") == before
    message = refusal(["discover", "--ckpt", str(run), *FAST, "--k", "4"], capsys)
    assert "holds a discover with other settings (k 8 -> 4)" in message and _rows(out / "discover.csv") == before


def test_sigterm_during_discover_keeps_whole_checkpoints_and_the_same_command_continues(unconditional_run, tmp_path, monkeypatch, capsys):
    import signal

    import diffprobe.commands.discover_output as work
    from diffprobe import interrupt

    reference = probe_main(["discover", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "reference"), *FAST])
    out = tmp_path / "stopped"
    real_load = work.load_model

    def signalled_before_the_second_checkpoint(*args, **kwargs):
        interrupt.request_stop(signal.SIGTERM)  # as RunSafety's handler would on a SIGTERM
        return real_load(*args, **kwargs)

    monkeypatch.setattr(work, "load_model", signalled_before_the_second_checkpoint)
    with pytest.raises(SystemExit) as stopped:
        probe_main(["discover", "--ckpt", str(unconditional_run), "--out", str(out), *FAST])
    assert stopped.value.code == 143
    assert {r["step"] for r in _rows(out / "dictionaries.csv")} == {"-1", "0"}, "only the finished checkpoint"
    monkeypatch.setattr(work, "load_model", real_load)
    probe_main(["discover", "--ckpt", str(unconditional_run), "--out", str(out), *FAST])
    for table in ("discover.csv", "dictionaries.csv"):
        assert _rows(out / table) == _rows(reference / table), f"{table}: no row lost, none twice, the same numbers"
    assert (out / "features/step000001_ema_mid_block_t0010.png").is_file()

    # A kill between the two tables of step 1 (discover.csv is written first): dictionaries.csv
    # lacks the step, so it is measured again, and its discover rows are not kept twice.
    from diffprobe.discover import results

    _, dictionaries = results.tables(out)
    dictionaries.write([r for r in dictionaries.read_rows() if r["step"] != 1], {"settings": dictionaries.read_summary()["settings"]})
    probe_main(["discover", "--ckpt", str(unconditional_run), "--out", str(out), *FAST])
    for table in ("discover.csv", "dictionaries.csv"):
        assert _rows(out / table) == _rows(reference / table), f"{table} after a kill between the tables"
    message = refusal(["discover", "--ckpt", str(unconditional_run), "--out", str(out), *FAST, "--concepts", "[shape]"], capsys)
    assert "other settings (concepts" in message, "a rerun with other concepts would mix two sets of rows"


def test_discover_on_a_run_of_data_without_concept_labels_shows_features_only(tmp_path, capsys):
    # A run trained on a local Hugging Face image folder with no concept columns.
    folder = str(write_imagefolder(tmp_path / "folder"))
    data = HFDataModule(folder, image_column="image", image_size=16, batch_size=4, num_workers=0)
    trainer = make_trainer(tmp_path, max_steps=1, every_n_steps=1)
    trainer.fit(make_module(), datamodule=data)
    run = Path(trainer.log_dir)
    args = ["discover", "--ckpt", str(run), "--data", folder, "--image_column", "image", *FAST[:-4], "--num_images", "20", "--device", "cpu"]
    out = probe_main(args)
    assert _rows(out / "discover.csv") == [] and len(_rows(out / "dictionaries.csv")) == 2 + 2 * 2  # x_t's, then steps 0 and 1
    assert (out / "features/step000001_ema_mid_block_t0001.png").is_file()
    assert "concepts found without labels" not in capsys.readouterr().out
    message = refusal([*args[:2], str(run), "--out", str(tmp_path / "out2"), *args[3:], "--concepts", "[label]"], capsys)
    assert "--concepts label: not concepts of these images" in message and "no concept labels" in message


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--layers", "[up_blocks.9]"], "up_blocks.9"),
        (["--timesteps", "[7]"], "timesteps [7] are not in the probe set's grid"),
        (["--k", "500"], "--k 500: mid_block has"),
        (["--expansion", "100"], "--expansion 100: at most 64"),
        (["--concepts", "[mood]"], "--concepts mood: not concepts of these images"),
    ],
)
def test_bad_input_is_refused_before_features_are_collected(flags, says, unconditional_run, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["discover", "--ckpt", str(unconditional_run), "--out", str(out), *FAST, *flags]
    assert says in refusal(args, capsys)
    assert not out.exists()
