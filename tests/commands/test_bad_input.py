"""Bad input is refused with one message that names it, before a run directory is made or a model is
built or sampled, and leaves nothing behind: train.py flags and data settings, probe.py linear /
sample / export."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import datasets
import pytest

from diffprobe.commands.probe import probe_main
from diffprobe.commands.train import train_main
from diffprobe.data.probe_set import ProbeSet
from diffprobe.io.loading import safe_load
from helpers import REPO, TINY_UNET, in_memory_dataset, refusal, shapes_data, write_imagefolder

FAST = ["--trainer.max_steps", "1", "--trainer.enable_progress_bar", "true", "--model.unet", json.dumps(TINY_UNET)]


def train(*extra: str) -> list[str]:
    return ["fit", "--config", str(REPO / "configs/quickstart.yaml"), *FAST, *extra]


def train_refusal(args: list[str], capsys) -> str:
    """What train_main tells the user as it exits (the exit message, or stderr for a command line it
    cannot read); it must come before any work, so no runs/ folder exists."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        train_main(args)
    assert not Path("runs").exists()
    return refused.value.code if isinstance(refused.value.code, str) else capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--model.learning_rat", "--trainer.max_step", "--data.init_args.image_siz"])
def test_abbreviated_or_misspelt_train_flag_is_named_first(flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    message = train_refusal(train(flag, "2"), capsys)
    assert message.splitlines()[0].startswith("error: ") and flag.rsplit(".", 1)[1] in message.splitlines()[0] + message.splitlines()[1]
    assert "Does not validate" not in message


def test_abbreviated_probe_flag_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        probe_main(["sample", "--ckpt", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "g.png"), "--nu", "2"])
    assert "unrecognized arguments: --nu" in capsys.readouterr().err
    assert "--batch-size" in refusal(["rise", "--ckpt", "x", "--out", "y", "--batch-size", "2"], capsys), "train.py's spelling: --batch_size"


def test_a_list_flag_given_another_tools_way_says_the_two_ways_it_takes_one(tmp_path, capsys):
    message = refusal(["linear", "--ckpt", str(tmp_path / "x.ckpt"), "--timesteps", "100,500"], capsys)
    assert "A list is given in YAML: --timesteps '[100, 500]'" in message and "--timesteps+ 100 --timesteps+ 500" in message
    # Both ways parse: the next refusal is about the missing checkpoint, not the list.
    for given in (["--timesteps", "[100, 500]"], ["--timesteps+", "100", "--timesteps+", "500"]):
        assert "x.ckpt does not exist" in refusal(["linear", "--ckpt", str(tmp_path / "x.ckpt"), *given], capsys)


def _hf(source: str, *extra: str) -> list[str]:
    return ["--data", "diffprobe.training.HFDataModule", "--data.source", source, "--data.image_size", "16", "--data.batch_size", "4", "--data.num_workers", "0", *extra]


def _data_case(case: str, root: Path) -> tuple[list[str], str]:
    """(flags, the start of the message the user must see first) for one bad data setting."""
    dataset = in_memory_dataset()
    if case == "conceptshapes image_size 24":
        return ["--data.init_args.image_size", "24"], "error: ConceptShapes image_size must be one of (16, 32, 64), got 24"
    if case == "held-out combination of an unknown value":
        return ["--data.init_args.heldout_combinations", "[[small, purple]]"], "error: held-out combination value 'purple' is not a ConceptShapes value"
    if case == "held-out combinations removing a value":
        return ["--data.init_args.heldout_combinations", "[[small, blue], [medium, blue], [large, blue]]"], "error: the held-out combinations leave object_colour 'blue' with no training image"
    if case == "batch_size 0":
        return ["--data.init_args.batch_size", "0"], "error: batch_size must be positive, got 0"
    if case == "channels 2":
        return _hf(str(write_imagefolder(root / "folder")), "--data.image_column", "image", "--data.channels", "2"), "error: channels must be 1 (grayscale) or 3 (RGB), got 2"
    if case == "missing source":
        return _hf(str(root / "no-such-folder")), f"error: data source '{root / 'no-such-folder'}': no file or folder at"
    if case == "parquet without the image column":
        dataset.to_parquet(str(root / "data.parquet"))
        return _hf(str(root / "data.parquet"), "--data.image_column", "image"), "error: image column 'image' not in data set"
    if case == "float concept column":
        dataset.add_column("weight", [0.5 * i for i in range(len(dataset))]).to_parquet(str(root / "data.parquet"))
        return _hf(str(root / "data.parquet"), "--data.image_column", "picture", "--data.concept_columns", "[weight]"), "error: concept column 'weight' holds float64 values, which cannot be a concept"
    if case == "empty image folder":
        (root / "empty" / "red").mkdir(parents=True)
        return _hf(str(root / "empty"), "--data.image_column", "image"), f"error: data folder {root / 'empty'} is empty"
    if case == "unknown concept column":
        return _hf(str(write_imagefolder(root / "folder")), "--data.image_column", "image", "--data.concept_columns", "[colour]"), "error: concept columns ['colour'] not in data set"
    raise AssertionError(case)


DATA_CASES = [
    "conceptshapes image_size 24", "held-out combination of an unknown value", "held-out combinations removing a value", "batch_size 0", "channels 2", "missing source", "parquet without the image column",
    "float concept column", "empty image folder", "unknown concept column",
]


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_settings_show_the_data_modules_own_message_first(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags, expected = _data_case(case, tmp_path)
    message = train_refusal(train(*flags), capsys)
    assert message.splitlines()[0].startswith(expected), message
    assert "Does not validate" not in message and "no run directory was made" in message


def test_float_concept_column_says_which_types_can_be_concepts(tmp_path):
    from diffprobe.training.datamodules import HFDataModule

    dataset = in_memory_dataset().add_column("weight", [0.5] * 12)
    datasets.DatasetDict(train=dataset).save_to_disk(str(tmp_path / "data"))
    with pytest.raises(ValueError, match="holds float64 values, which cannot be a concept.*ClassLabel, bool, int or string column"):
        HFDataModule(str(tmp_path / "data"), image_column="picture", concept_columns=["weight"], batch_size=2)


def test_a_label_only_in_the_heldout_split_still_has_a_name(tmp_path):
    from diffprobe.training.datamodules import HFDataModule

    train = in_memory_dataset().add_column("count", [1, 2] * 6)
    heldout = in_memory_dataset(4).add_column("count", [3] * 4)
    datasets.DatasetDict(train=train, test=heldout).save_to_disk(str(tmp_path / "data"))
    data = HFDataModule(str(tmp_path / "data"), image_column="picture", concept_columns=["count"], image_size=16, batch_size=2, num_workers=0)
    assert data.concepts == {"count": ("count_1", "count_2", "count_3")}
    assert data.heldout_dataset()[0]["caption"] == "count_3"


@pytest.fixture
def run(unconditional_run_copy) -> Path:
    """A private copy of the shared tiny run (conftest.py): these tests write into it."""
    return unconditional_run_copy


def test_linear_checks_timesteps_before_writing_and_a_corrected_rerun_works(run, tmp_path):
    out = tmp_path / "probes"
    args = ["linear", "--ckpt", str(run / "checkpoints/last.ckpt"), "--out", str(out), "--layers", "mid_block",
            "--method", "ridge", "--num_images", "12", "--device", "cpu"]
    with pytest.raises(SystemExit, match=r"--timesteps: the timesteps \[5000\] are outside \[0, 100\): the model has 100 training timesteps"):
        probe_main([*args, "--timesteps", "[0, 5000]"])
    assert not out.exists()
    # a probe set made for another T is refused the same way, before --out is made
    ProbeSet.from_dataset(shapes_data().heldout_dataset(), shapes_data().concepts, size=12, timesteps=[0, 500]).save(tmp_path / "other.pt")
    with pytest.raises(SystemExit, match=r"timesteps \[500\] are outside \[0, 100\)"):
        probe_main([*args, "--probe_set", str(tmp_path / "other.pt")])
    assert not out.exists()
    assert probe_main([*args, "--timesteps", "[0, 50]"]) == out
    assert {r["t"] for r in csv.DictReader((out / "probes.csv").open())} == {"0", "50"}
    assert ProbeSet.load(out / "probe_set.pt").timesteps.tolist() == [0, 50]


def test_sample_refuses_an_existing_out_before_loading(run, tmp_path, monkeypatch):
    import diffprobe.training.checkpoints

    existing = tmp_path / "grid.png"
    existing.write_bytes(b"my picture")
    before = existing.stat().st_mtime_ns

    def no_loading(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before --out was checked")

    monkeypatch.setattr(diffprobe.training.checkpoints, "load_module", no_loading)
    ckpt = str(run / "checkpoints/last.ckpt")
    with pytest.raises(SystemExit, match=f"--out {existing} exists"):
        probe_main(["sample", "--ckpt", ckpt, "--out", str(existing), "--num", "2", "--steps", "2"])
    assert existing.read_bytes() == b"my picture" and existing.stat().st_mtime_ns == before
    with pytest.raises(SystemExit, match=r"must be a \.png file name"):
        probe_main(["sample", "--ckpt", ckpt, "--out", str(tmp_path / "grid"), "--num", "2", "--steps", "2"])
    assert not (tmp_path / "grid").exists()


def test_sample_refuses_captions_for_an_unconditional_model_and_a_raw_export_gets_its_own_folder(run, tmp_path):
    with pytest.raises(SystemExit, match="unconditional model: leave out --caption"):
        probe_main(["sample", "--ckpt", str(run), "--out", str(tmp_path / "s.png"), "--num", "1", "--steps", "1", "--caption", "a red circle"])
    assert not (tmp_path / "s.png").exists()
    ema = probe_main(["export", "--ckpt", str(run / "checkpoints/last.ckpt")])
    raw = probe_main(["export", "--ckpt", str(run / "checkpoints/last.ckpt"), "--weights", "raw"])
    assert ema.name == "export-last" and raw.name == "export-last-raw"


def test_a_folder_of_several_runs_is_refused_naming_them(run, tmp_path):
    shutil.copytree(run, run.parent / "version_1")
    with pytest.raises(SystemExit, match="holds the checkpoints of several runs"):
        probe_main(["linear", "--ckpt", str(run.parent), "--device", "cpu"])


def test_sample_makes_missing_parent_folders(run, tmp_path):
    out = tmp_path / "new" / "folder" / "grid.png"
    assert probe_main(["sample", "--ckpt", str(run / "checkpoints/last.ckpt"), "--out", str(out), "--num", "2", "--steps", "2", "--scale", "1"]) == out
    assert out.stat().st_size > 0


def test_export_defaults_stay_in_the_run_or_the_working_directory(run, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # a checkpoint inside a run: the export goes into that run
    assert probe_main(["export", "--ckpt", str(run / "checkpoints/last.ckpt")]).resolve() == run / "export-last"
    assert (run / "export-last/diffprobe.json").exists()
    # a checkpoint outside a run: into the working directory, never its grandparent folder
    loose = tmp_path / "downloads" / "models" / "model.ckpt"
    loose.parent.mkdir(parents=True)
    shutil.copy(run / "checkpoints/last.ckpt", loose)
    assert probe_main(["export", "--ckpt", str(loose)]).resolve() == work / "export-model"
    assert (work / "export-model/diffprobe.json").exists() and not (tmp_path / "downloads/export-model").exists()


def test_sample_refuses_more_steps_than_the_model_has_timesteps(run, tmp_path):
    T = safe_load(run / "checkpoints/last.ckpt")["hyper_parameters"]["num_train_timesteps"]
    with pytest.raises(SystemExit) as refused:
        probe_main(["sample", "--ckpt", str(run), "--out", str(tmp_path / "s.png"), "--num", "1", "--steps", str(T + 1)])
    message = str(refused.value.code)
    assert f"--steps {T + 1}: this model has {T} training timesteps" in message and len(message.splitlines()) == 1
    assert not (tmp_path / "s.png").exists()
