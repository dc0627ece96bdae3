"""probe.py rise|cam|lime|relevance|auc|correlation|groundtruth end to end on tiny checkpoints,
an exported folder and a tiny random Stable Diffusion; configs/probe; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_module, make_trainer, read_events, shapes_data
from diffprobe.cli import probe_main

CAPTION = "a large red solid circle at the top left on a navy background"
FAST = ["--steps", "4", "--step", "2", "--scale", "1"]
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "probe"


@pytest.fixture(scope="module")
def unconditional_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("uncond")
    make_trainer(root, max_steps=1, every_n_steps=1).fit(make_module(), datamodule=shapes_data())
    return root / "runs/test/version_0"


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    data = shapes_data()
    make_trainer(root, max_steps=1, every_n_steps=1).fit(make_module(conditional=True, data=data), datamodule=data)
    return root / "runs/test/version_0"


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    pytest.importorskip("transformers")
    from tiny_sd import write_tiny_stable_diffusion

    return write_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


def test_rise_and_cam_write_overlays_maps_json_and_tensorboard(unconditional_run, tmp_path):
    out = probe_main(["rise", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "rise"), "--masks", "16", "--run", str(unconditional_run), *FAST])
    assert {p.name for p in out.iterdir()} == {"rise_xt.png", "rise_final.png", "rise.pt", "rise.json"}
    numbers = json.loads((out / "rise.json").read_text())
    assert numbers["step"] == 2 and numbers["t"] == numbers["timesteps"][2] and numbers["masks"] == 16
    saliency = torch.load(out / "rise.pt", weights_only=True)["saliency"]
    assert saliency.shape == (16, 16) and torch.isfinite(saliency).all()
    out = probe_main(["cam", "--ckpt", str(unconditional_run / "checkpoints/last.ckpt"), "--out", str(tmp_path / "cam"), "--run", str(unconditional_run), *FAST])
    maps = torch.load(out / "cam.pt", weights_only=True)
    assert len(maps["layer_maps"]) == 14 and maps["total"].shape == (16, 16)
    assert (out / "cam_layers.png").exists() and (out / "cam_xt.png").exists()
    tags = read_events(unconditional_run).Tags()["images"]
    t = numbers["t"]
    assert f"explain/rise/step02_t{t:04d}/x_t" in tags and f"explain/cam/step02_t{t:04d}/final" in tags


def test_config_sets_the_papers_defaults_and_flags_override_it(unconditional_run, tmp_path):
    out = probe_main(["rise", "--config", str(CONFIGS / "rise.yaml"), "--ckpt", str(unconditional_run), "--out", str(tmp_path / "r"), "--masks", "8", *FAST])
    numbers = json.loads((out / "rise.json").read_text())
    assert numbers["masks"] == 8 and numbers["similarity"] == "structure" and numbers["window"] == 15
    bad = tmp_path / "bad.yaml"
    bad.write_text("maskz: 5\n")
    with pytest.raises(SystemExit, match=r"unknown setting\(s\) \['maskz'\]"):
        probe_main(["rise", "--config", str(bad), "--ckpt", str(unconditional_run), "--out", str(tmp_path / "b")])


PAPER = {
    "rise": {"masks": 500, "keep": 0.5, "similarity": "structure", "window": 15, "sigma": 1.5, "steps": 20, "step": 15},
    "cam": {"steps": 20, "step": 15},
    "lime": {"samples": 1000, "kernel_width": 0.25, "response": "mean", "top": 5, "steps": 20, "step": 15},
    "auc": {"masks": 500, "samples": 1000, "steps": 20, "step": 15, "methods": ["rise", "cam", "lime", "random"]},
    "schedules": {"schedule_steps": 30, "lam": 60, "schedules": ["uniform", "early", "latter"]},
    "relevance": {"schedule_steps": 30, "lam": 60, "schedules": ["uniform", "early", "latter"]},
    "correlation": {"schedule_steps": 30, "lam": 60},
}


@pytest.mark.parametrize("command", sorted(PAPER))
def test_paper_configs_set_the_papers_settings(command):
    from diffprobe.cli import probe_parser
    from diffprobe.explain_flags import apply_config, apply_repeated

    config = CONFIGS / ("schedules.yaml" if command == "relevance" else f"{command}.yaml")
    parser = probe_parser()
    args = [command, f"--config={config}", "--ckpt", "x", "--out", "y"]
    repeated = apply_config(parser.explain_parsers[command], args)
    ns = parser.parse_args(args)
    apply_repeated(ns, repeated)
    assert {key: getattr(ns, key) for key in PAPER[command]} == PAPER[command]
    if command == "correlation":
        assert len(ns.triple) == 4 and ns.triple[0] == ["a large red solid circle", "at the top left on", "a navy background"]
        ns = parser.parse_args([*args, "--triple", "a", "b", "c"])
        apply_repeated(ns, repeated)
        assert ns.triple == [["a", "b", "c"]], "a flag replaces the config's list, it does not append to it"


def test_auc_compares_methods_with_random(unconditional_run, tmp_path):
    args = ["auc", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "auc"), "--inputs", "2", "--masks", "8", "--samples", "16", "--stride", "64", *FAST]
    out = probe_main(args)
    numbers = json.loads((out / "auc.json").read_text())
    assert set(numbers["methods"]) == {"rise", "cam", "lime", "random"}
    for method in numbers["methods"].values():
        assert 0 <= method["insertion"]["auc"] <= 1 and method["insertion"]["better"] == "lower"
        assert method["deletion"]["better"] == "higher"
    curves = torch.load(out / "auc.pt", weights_only=True)
    assert curves["rise/insertion"].shape == (2, 5)  # 2 inputs, 0..256 positions in strides of 64
    assert (out / "auc_curves.png").exists()


def test_lime_command(unconditional_run, tmp_path):
    out = probe_main(["lime", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "lime"), "--samples", "24", "--top", "3", *FAST])
    numbers = json.loads((out / "lime.json").read_text())
    assert len(numbers["top_segments"]) == 3 and len(numbers["coefficients"]) >= 3
    assert {"lime_xt.png", "lime_final.png", "lime_top.png", "lime.pt"} <= {p.name for p in out.iterdir()}


def test_conditional_commands_on_a_checkpoint_and_its_export(conditional_run, tmp_path):
    out = probe_main(["relevance", "--ckpt", str(conditional_run), "--out", str(tmp_path / "rel"), "--prompt", CAPTION, "--schedule-steps", "4", "--lam", "3", "--scale", "1"])
    numbers = json.loads((out / "relevance.json").read_text())
    assert set(numbers["schedules"]) == {"uniform", "early", "latter"}
    early = numbers["schedules"]["early"]
    assert early["timesteps"] == [99, 87, 74, 49] and len(early["scores"][0]) == len(numbers["words"]) == 13
    assert numbers["words"][4] == "circle"
    assert {"relevance_curves.png", "relevance_totals.png", "relevance_images.png"} <= {p.name for p in out.iterdir()}

    exported = probe_main(["export", "--ckpt", str(conditional_run / "checkpoints/last.ckpt"), "--out", str(tmp_path / "export")])
    out = probe_main(["cam", "--ckpt", str(exported), "--out", str(tmp_path / "cam"), "--prompt", CAPTION, *FAST])
    assert torch.load(out / "cam.pt", weights_only=True)["total"].shape == (16, 16)
    from_ckpt = probe_main(["cam", "--ckpt", str(conditional_run), "--out", str(tmp_path / "cam2"), "--prompt", CAPTION, *FAST])
    assert torch.allclose(torch.load(out / "cam.pt", weights_only=True)["total"], torch.load(from_ckpt / "cam.pt", weights_only=True)["total"], atol=1e-5), "export keeps weights and CFG scale"
    out = probe_main(["schedules", "--ckpt", str(exported), "--out", str(tmp_path / "sched"), "--prompt", CAPTION, "--seeds", "0", "--steps", "3"])
    out = probe_main(["schedules", "--ckpt", str(exported), "--out", str(tmp_path / "win"), "--caption", CAPTION, "--seeds", "0", "1", "--schedules", "window", "--window-steps", "3", "--window-uniform-steps", "2", "--window-start", "40", "--window-width", "20"])
    info = json.loads((out / "schedules.json").read_text())
    assert info["timesteps"]["window"] == [99, 60, 50, 40, 0] and torch.load(out / "window.pt", weights_only=True).shape == (2, 3, 16, 16)

    triples = ["--triple", "a large red solid circle", "at the top left on", "a navy background"]
    out = probe_main(["correlation", "--ckpt", str(conditional_run), "--out", str(tmp_path / "corr"), *triples, "--schedule-steps", "4", "--lam", "3"])
    numbers = json.loads((out / "correlation.json").read_text())
    assert set(numbers["role_totals"]["early"]) == {"subject", "relation", "object"}
    assert numbers["prompts"][0]["roles"][:5] == ["subject"] * 5
    assert set(numbers["spearman_timestep_vs_role_relevance"]["latter"]["object"]) >= {"rho", "p_value"}


def test_groundtruth_command(conditional_run, tmp_path):
    out = probe_main(["groundtruth", "--ckpt", str(conditional_run), "--out", str(tmp_path / "gt"), "--inputs", "2", "--masks", "8", "--steps", "3", "--scale", "1"])
    report = json.loads((out / "groundtruth.json").read_text())
    assert len(report["rise_mass"]) == len(report["cam_mass"]) == 3
    assert len(report["change_by_concept"]) == 2 and len(report["change_by_concept"][0]) == 6
    assert 0 <= report["r2_agreement"] <= 1
    assert (out / "r1_saliency_in_object.png").exists() and (out / "r2_relevance_vs_change.png").exists()


def test_every_tool_runs_on_a_tiny_stable_diffusion(tiny_sd, tmp_path):
    prompt = ["--prompt", "a red cat"]
    out = probe_main(["rise", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "rise"), "--masks", "8", *prompt, *FAST])
    assert torch.load(out / "rise.pt", weights_only=True)["saliency"].shape == (8, 8)  # latent resolution
    from PIL import Image

    assert Image.open(out / "rise_xt.png").size == (16, 16)  # shown over the VAE-decoded x_t
    out = probe_main(["cam", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "cam"), *prompt, *FAST])
    assert torch.isfinite(torch.load(out / "cam.pt", weights_only=True)["total"]).all()
    out = probe_main(["lime", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "lime"), "--samples", "16", *prompt, *FAST])
    assert torch.load(out / "lime.pt", weights_only=True)["saliency"].shape == (8, 8)
    out = probe_main(["relevance", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "rel"), *prompt, "--schedule-steps", "3", "--lam", "3", "--scale", "1"])
    numbers = json.loads((out / "relevance.json").read_text())
    assert numbers["words"] == ["a</w>", "red</w>", "cat</w>"]
    assert len(numbers["schedules"]["latter"]["scores"]) == 3
    out = probe_main(["schedules", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "sched"), *prompt, "--seeds", "0", "1", "--steps", "3", "--lam", "3"])
    assert torch.load(out / "early.pt", weights_only=True).shape == (2, 3, 16, 16)  # decoded by the VAE
    out = probe_main(["auc", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "auc"), *prompt, "--inputs", "1", "--masks", "8", "--samples", "16", "--stride", "16", *FAST])
    assert set(json.loads((out / "auc.json").read_text())["methods"]) == {"rise", "cam", "lime", "random"}
    triples = ["--triple", "a red cat", "on", "the mat"]
    out = probe_main(["correlation", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "corr"), *triples, "--schedule-steps", "3", "--lam", "3"])
    assert json.loads((out / "correlation.json").read_text())["prompts"][0]["roles"] == ["subject"] * 3 + ["relation"] + ["object"] * 2


def test_bad_input_gets_a_clear_error_before_work(unconditional_run, conditional_run, tmp_path, capsys):
    with pytest.raises(SystemExit, match="step 9 is outside the run"):
        probe_main(["rise", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "a"), "--steps", "4", "--step", "9"])
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit, match="takes no prompt"):
        probe_main(["cam", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "b"), "--prompt", "a red circle", *FAST])
    with pytest.raises(SystemExit, match="needs a prompt"):
        probe_main(["cam", "--ckpt", str(conditional_run), "--out", str(tmp_path / "c"), *FAST])
    with pytest.raises(SystemExit, match="unknown layer"):
        probe_main(["cam", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "d"), "--layers", "up_blocks.7", *FAST])
    with pytest.raises(SystemExit, match="hf download CompVis/stable-diffusion-v1-4.*pass --ckpt"):
        probe_main(["relevance", "--ckpt", str(tmp_path / "stable-diffusion-v1-4"), "--out", str(tmp_path / "e"), "--prompt", "a cat"])
    with pytest.raises(SystemExit, match="needs a conditional model"):
        probe_main(["relevance", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "f")])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        probe_main(["auc", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "g"), "--inputs", "0"])
    assert "--inputs: must be a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not empty"):
        probe_main(["cam", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "full"), *FAST])
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"


def test_configs_are_checked_like_flags_and_late_errors_come_early(unconditional_run, conditional_run, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("masks: 0\n")
    with pytest.raises(SystemExit, match="masks.*must be a positive integer"):
        probe_main(["rise", "--config", str(bad), "--ckpt", str(unconditional_run), "--out", str(tmp_path / "a")])
    bad.write_text("similarity: psnr\n")
    with pytest.raises(SystemExit, match="similarity must be one of"):
        probe_main(["rise", "--config", str(bad), "--ckpt", str(unconditional_run), "--out", str(tmp_path / "a")])
    one = tmp_path / "one.yaml"
    one.write_text(f"prompt: {CAPTION}\ninputs: 1\nmethods: [random]\nstride: 64\n")
    out = probe_main(["auc", "--config", str(one), "--ckpt", str(conditional_run), "--out", str(tmp_path / "b"), *FAST])
    assert json.loads((out / "auc.json").read_text())["inputs"] == [{"seed": 0, "prompt": CAPTION}], "one prompt string is one prompt"
    with pytest.raises(SystemExit, match="not a ConceptShapes caption"):
        probe_main(["groundtruth", "--ckpt", str(conditional_run), "--out", str(tmp_path / "c"), "--prompt", "a red circle"])
    with pytest.raises(SystemExit, match="no probe results"):
        probe_main(["correlation", "--ckpt", str(conditional_run), "--out", str(tmp_path / "d"), "--probe-results", str(tmp_path / "none.csv")])
    with pytest.raises(SystemExit, match="DF-CAM explains block layers"):
        probe_main(["cam", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "e"), "--layers", "time_embedding", *FAST])
    with pytest.raises(SystemExit, match=r"words \['purple', 'unicorn'\] are not in this model's caption vocabulary"):
        probe_main(["cam", "--ckpt", str(conditional_run), "--out", str(tmp_path / "f"), "--prompt", "a purple unicorn", *FAST])
    bad.write_text("masks: [1\n")
    with pytest.raises(SystemExit, match="is not valid YAML"):
        probe_main(["rise", "--config", str(bad), "--ckpt", str(unconditional_run), "--out", str(tmp_path / "g")])
    with pytest.raises(SystemExit, match="R2 compares consecutive steps"):
        probe_main(["groundtruth", "--ckpt", str(conditional_run), "--out", str(tmp_path / "h"), "--steps", "1"])
    assert not any((tmp_path / name).exists() for name in "acdfgh")
