"""probe.py fidelity and the ConceptFidelity callback on the shared tiny runs (conftest.py): tables,
summaries, TensorBoard, idempotent reruns, and bad input refused before anything is sampled."""

from __future__ import annotations

import json
import shutil

from diffprobe.commands.probe import probe_main
from diffprobe.training.callbacks import ConceptFidelity
from helpers import READER, READER_SETTINGS, make_module, make_trainer, read_events, refusal, shapes_data

FAST = ["--num_captions", "6", "--steps", "4", *READER, "--device", "cpu", "--batch_size", "6"]


def test_fidelity_over_a_conditional_run_writes_rows_summary_and_tensorboard(conditional_run, capsys):
    folder = probe_main(["fidelity", "--ckpt", str(conditional_run), *FAST])
    assert folder == conditional_run / "fidelity"
    stored = json.loads((folder / "fidelity.json").read_text())
    rows = stored["rows"]
    # step 0 (the untrained weights), 1 and 2 (last.ckpt repeats step 2) x 6 concepts
    assert sorted({r["step"] for r in rows}) == [0, 1, 2] and len(rows) == 3 * 6
    assert {r["metric"] for r in rows} == {"fidelity"} and all(0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1 for r in rows)
    assert set(stored["summary"]["rendered_at_step"]["ema"]) == {r["concept"] for r in rows}
    assert set(stored["summary"]["reader"]["accuracy"]) == {r["concept"] for r in rows}
    assert (folder / "fidelity_ema.png").is_file()
    events = read_events(conditional_run)
    assert [e.step for e in events.Scalars("fidelity_ckpt/shape")] == [0, 1, 2]
    assert "rendered at step" in capsys.readouterr().out
    mtime = (folder / "fidelity.csv").stat().st_mtime_ns
    probe_main(["fidelity", "--ckpt", str(conditional_run), *FAST])
    assert (folder / "fidelity.csv").stat().st_mtime_ns == mtime, "a rerun with nothing new measures nothing"
    message = refusal(["fidelity", "--ckpt", str(conditional_run), *FAST[:-2], "--num_captions", "8"], capsys)
    assert "other settings (num_captions)" in message and "--overwrite true" in message


def test_unconditional_fidelity_is_a_total_variation_with_memorisation(unconditional_run, tmp_path):
    out = tmp_path / "f"
    folder = probe_main(["fidelity", "--ckpt", str(unconditional_run / "checkpoints/last.ckpt"), "--out", str(out), "--memorisation", "true",
                         "--memorisation_images", "40", *FAST])  # fmt: skip
    rows = json.loads((folder / "fidelity.json").read_text())["rows"]
    assert {r["metric"] for r in rows} == {"tv"} and all(0 <= r["value"] <= 1 and 0 <= r["confident"] <= 1 for r in rows)
    assert all(0 <= r["memorised"] <= 1 for r in rows)


def test_bad_input_is_refused_before_anything_is_sampled(conditional_run, unconditional_run, tmp_path, capsys):
    from diffprobe.diffusion.folders import load_exported, save_exported
    from diffprobe.intervene.reader import ConceptReader, TrainedReader

    other = TrainedReader(ConceptReader({"colour": ("red", "blue")}, 16), {"colour": 1.0}, 10)
    other.save(tmp_path / "other_reader.pt")
    message = refusal(["fidelity", "--ckpt", str(conditional_run), "--out", str(tmp_path / "a"), "--reader", str(tmp_path / "other_reader.pt"), *FAST], capsys)
    assert "reads ['colour'], not this data's concepts" in message and "trained on other data" in message
    assert not (tmp_path / "a").exists()
    exported = save_exported(load_exported(probe_main(["export", "--ckpt", str(conditional_run), "--out", str(tmp_path / "export")])), tmp_path / "copy")
    shutil.rmtree(exported / "caption_encoder")
    message = refusal(["fidelity", "--ckpt", str(exported), "--out", str(tmp_path / "b"), *FAST], capsys)
    assert "caption_encoder" in message and not (tmp_path / "b").exists()
    assert "--steps 5000" in refusal(["fidelity", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "c"), *FAST, "--steps", "5000"], capsys)


def test_the_callback_logs_fidelity_and_rendered_at_step(tmp_path):
    data = shapes_data(heldout_size=12)
    callback = ConceptFidelity(every_n_steps=2, num_captions=4, num_inference_steps=3, **READER_SETTINGS, batch_size=4)
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[callback])
    trainer.fit(make_module(conditional=True, data=data), datamodule=data)
    events = read_events(trainer.log_dir)
    assert [e.step for e in events.Scalars("fidelity/texture")] == [0, 2]
    assert [e.step for e in events.Scalars("Overview/rendered_at_step/texture")] == [0, 2]
    assert set(callback.history) == set(data.concepts) and set(callback.history["shape"]) == {0, 2}
    assert callback.state_dict()["history"]["shape"].keys() == {0, 2}, "the history resumes with the run"
