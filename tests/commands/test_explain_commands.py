"""probe.py rise|cam|lime|relevance|schedules|auc|correlation|groundtruth end to end on the shared tiny
runs (conftest.py), an exported folder and a tiny random Stable Diffusion; configs/probe; clear errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from diffprobe.commands.probe import probe_main
from helpers import REPO, read_events, refusal

CAPTION = "a large red solid circle at the top left on a navy background"
FAST = ["--steps", "4", "--step", "2", "--scale", "1"]
CONFIGS = REPO / "configs" / "probe"


def test_rise_and_cam_write_overlays_maps_json_and_tensorboard(unconditional_run, tmp_path):
    out = probe_main(["rise", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "rise"), "--masks", "16", "--logdir", str(unconditional_run), *FAST])
    assert {p.name for p in out.iterdir()} == {"rise.png", "rise_xt.png", "rise_final.png", "rise.pt", "rise.json"}
    numbers = json.loads((out / "rise.json").read_text())
    assert numbers["step"] == 2 and numbers["t"] == numbers["timesteps"][2] and numbers["masks"] == 16
    saliency = torch.load(out / "rise.pt", weights_only=True)["saliency"]
    assert saliency.shape == (16, 16) and torch.isfinite(saliency).all()
    out = probe_main(["cam", "--ckpt", str(unconditional_run / "checkpoints/last.ckpt"), "--out", str(tmp_path / "cam"), "--logdir", str(unconditional_run), *FAST])
    maps = torch.load(out / "cam.pt", weights_only=True)
    assert len(maps["layer_maps"]) == 14 and maps["total"].shape == (16, 16)
    assert (out / "cam_layers.png").exists() and (out / "cam_xt.png").exists()
    tags = read_events(unconditional_run).Tags()["images"]
    t = numbers["t"]
    assert f"explain/rise/step02_t{t:04d}/x_t" in tags and f"explain/cam/step02_t{t:04d}/final" in tags
    assert f"explain/rise/step02_t{t:04d}/figure" in tags  # the titled figure with its colour bar


def test_config_sets_settings_and_flags_override_it(unconditional_run, tmp_path, capsys):
    config = tmp_path / "rise.yaml"
    config.write_text("masks: 12\nsimilarity: cosine\n")
    out = probe_main(["rise", "--config", str(config), "--ckpt", str(unconditional_run), "--out", str(tmp_path / "r"), "--masks", "8", *FAST])
    numbers = json.loads((out / "rise.json").read_text())
    assert numbers["masks"] == 8 and numbers["similarity"] == "cosine" and numbers["window"] == 15
    config.write_text("maskz: 5\n")
    assert "maskz" in refusal(["rise", "--config", str(config), "--ckpt", str(unconditional_run), "--out", str(tmp_path / "b")], capsys)
    assert not (tmp_path / "b").exists()


# The paper's settings (Park, Ju & Lee 2024, section 4): the commands' defaults, plus what the files in
# configs/probe add where a paper setting is not a sensible default (64 inputs, the prompts).
PAPER = {
    "rise": {"masks": 500, "keep": 0.5, "similarity": "structure", "window": 15, "sigma": 1.5, "steps": 20, "step": 15},
    "cam": {"steps": 20, "step": 15},
    "lime": {"samples": 1000, "kernel_width": 0.25, "response": "mean", "top": 5, "steps": 20, "step": 15},
    "auc": {"inputs": 64, "masks": 500, "samples": 1000, "steps": 20, "step": 15, "methods": ("rise", "cam", "lime", "random")},
    "schedules": {"schedule": {"steps": 30, "lam": 60, "kinds": ("uniform", "early", "latter")}},
    "relevance": {"schedule": {"steps": 30, "lam": 60, "kinds": ("uniform", "early", "latter")}},
    "correlation": {"schedule": {"steps": 30, "lam": 60, "kinds": ("uniform", "early", "latter")}},
}


@pytest.mark.parametrize("command", sorted(PAPER))
def test_defaults_and_configs_give_the_papers_settings(command):
    from diffprobe.commands.probe import probe_parser

    parser = probe_parser()
    config = CONFIGS / f"{command}.yaml"
    args = [command, *([f"--config={config}"] if config.exists() else []), "--ckpt", "x", "--out", "y"]
    settings = parser.instantiate(parser.parse_args(args))[command]
    found = {key: settings[key] for key in PAPER[command]}
    if "schedule" in found:
        found["schedule"] = {key: getattr(found["schedule"], key) for key in PAPER[command]["schedule"]}
    assert found == PAPER[command]
    if command == "correlation":
        assert len(settings.triple) == 4 and settings.triple[0] == ("a large red solid circle", "at the top left on", "a navy background")
        settings = parser.parse_args([*args, "--triple", "[[a, b, c]]"])[command]
        assert settings.triple == [("a", "b", "c")], "a flag replaces the config's list, it does not append to it"


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


def test_sample_refuses_words_outside_the_models_vocabulary_before_sampling(conditional_run, tmp_path):
    grid = tmp_path / "grid.png"
    base = ["sample", "--ckpt", str(conditional_run), "--out", str(grid), "--num", "2", "--steps", "2"]
    with pytest.raises(SystemExit, match=r"--caption: words \['purple', 'hexagon'\] are not in this model's caption vocabulary; use its words: \[.*'circle'"):
        probe_main([*base, "--caption", "[a large purple solid hexagon, a small red solid circle]"])
    assert not grid.exists()
    assert probe_main([*base, "--caption", CAPTION]) == grid and grid.stat().st_size > 0


def test_conditional_commands_on_a_checkpoint_and_its_export(conditional_run, tmp_path):
    out = probe_main(["relevance", "--ckpt", str(conditional_run), "--out", str(tmp_path / "rel"), "--prompt", CAPTION, "--schedule.steps", "4", "--schedule.lam", "3", "--scale", "1"])
    numbers = json.loads((out / "relevance.json").read_text())
    assert set(numbers["schedules"]) == {"uniform", "early", "latter"}
    early = numbers["schedules"]["early"]
    assert early["timesteps"] == [99, 87, 74, 49] and len(early["scores"][0]) == len(numbers["words"]) == 13
    assert numbers["words"][4] == "circle"
    assert {"relevance_curves.png", "relevance_totals.png", "relevance_images.png"} <= {p.name for p in out.iterdir()}

    exported = probe_main(["export", "--ckpt", str(conditional_run / "checkpoints/last.ckpt"), "--out", str(tmp_path / "export")])
    out = probe_main(["cam", "--ckpt", str(exported), "--out", str(tmp_path / "cam"), "--prompt", CAPTION, *FAST])
    # one source resolver: linear reads the same conditional export (its UNet and caption encoder)
    linear = ["linear", "--layers", "mid_block", "--timesteps", "[0, 50]", "--num_images", "12", "--method", "ridge", "--device", "cpu"]
    probes = probe_main([*linear, "--ckpt", str(exported), "--out", str(tmp_path / "probes")])
    from_run = probe_main([*linear, "--ckpt", str(conditional_run / "checkpoints/last.ckpt"), "--out", str(tmp_path / "probes_ckpt")])
    accuracy = [[float(r["accuracy"]) for r in csv.DictReader((folder / "probes.csv").open())] for folder in (probes, from_run)]
    assert len(accuracy[0]) == 2 * 6 and accuracy[0] == pytest.approx(accuracy[1], abs=1e-4), "the export holds the checkpoint's EMA weights"
    assert torch.load(out / "cam.pt", weights_only=True)["total"].shape == (16, 16)
    from_ckpt = probe_main(["cam", "--ckpt", str(conditional_run), "--out", str(tmp_path / "cam2"), "--prompt", CAPTION, *FAST])
    assert torch.allclose(torch.load(out / "cam.pt", weights_only=True)["total"], torch.load(from_ckpt / "cam.pt", weights_only=True)["total"], atol=1e-5), "export keeps weights and CFG scale"
    out = probe_main(["schedules", "--ckpt", str(exported), "--out", str(tmp_path / "sched"), "--prompt", CAPTION, "--seeds", "[0]", "--schedule.steps", "3"])
    out = probe_main(["schedules", "--ckpt", str(exported), "--out", str(tmp_path / "win"), "--prompt", CAPTION, "--seeds", "[0, 1]", "--schedule.kinds", "[window]", "--schedule.window_steps", "3", "--schedule.window_uniform_steps", "2", "--schedule.window_start", "40", "--schedule.window_width", "20"])
    info = json.loads((out / "schedules.json").read_text())
    assert info["timesteps"]["window"] == [99, 60, 50, 40, 0] and torch.load(out / "window.pt", weights_only=True).shape == (2, 3, 16, 16)

    triples = ["--triple", "[[a large red solid circle, at the top left on, a navy background]]"]
    out = probe_main(["correlation", "--ckpt", str(conditional_run), "--out", str(tmp_path / "corr"), *triples, "--schedule.steps", "4", "--schedule.lam", "3"])
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
    """One behaviour of each tool on a Stable Diffusion folder (latent x_t, VAE decode, CLIP text)."""
    from PIL import Image

    prompt = ["--prompt", "a red cat"]
    out = probe_main(["rise", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "rise"), "--masks", "8", *prompt, *FAST])
    rise = torch.load(out / "rise.pt", weights_only=True)
    assert rise["saliency"].shape == (8, 8) and rise["saliency"].std() > 0, "a map at latent resolution that varies"
    assert Image.open(out / "rise_xt.png").size == (16, 16)  # shown over the VAE-decoded x_t
    other = probe_main(["rise", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "rise2"), "--masks", "8", "--prompt", "a blue dog", *FAST])
    assert not torch.equal(torch.load(other / "rise.pt", weights_only=True)["saliency"], rise["saliency"]), "the prompt conditions the UNet"

    out = probe_main(["cam", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "cam"), *prompt, *FAST])
    cam = torch.load(out / "cam.pt", weights_only=True)
    assert len(cam["layer_maps"]) > 1 and torch.allclose(cam["total"], torch.stack(list(cam["layer_maps"].values())).sum(0))
    assert all(0 <= float(m.min()) and float(m.max()) <= 1 for m in cam["layer_maps"].values()), "each layer's map is min-max normalised"

    out = probe_main(["lime", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "lime"), "--samples", "16", "--top", "2", *prompt, *FAST])
    lime = json.loads((out / "lime.json").read_text())
    coefficients = torch.tensor(lime["coefficients"])
    assert lime["top_segments"] == coefficients.argsort(descending=True)[:2].tolist(), "the top superpixels are the largest weights"

    out = probe_main(["relevance", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "rel"), *prompt, "--schedule.steps", "3", "--schedule.lam", "3", "--scale", "1"])
    numbers = json.loads((out / "relevance.json").read_text())
    assert numbers["words"] == ["a</w>", "red</w>", "cat</w>"]
    for run in numbers["schedules"].values():  # per step: min-max over the prompt's words
        assert len(run["scores"]) == 3 and all(min(row) == 0 and max(row) == pytest.approx(1) for row in run["scores"])

    out = probe_main(["schedules", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "sched"), *prompt, "--seeds", "[0, 1]", "--schedule.steps", "3", "--schedule.lam", "3"])
    timesteps = json.loads((out / "schedules.json").read_text())["timesteps"]
    early, latter = timesteps["early"], timesteps["latter"]
    assert early[0] - early[1] < latter[0] - latter[1], "early packs its steps at high t, latter spreads them there"
    images = {name: torch.load(out / f"{name}.pt", weights_only=True) for name in timesteps}
    assert images["early"].shape == (2, 3, 16, 16) and not torch.equal(images["early"], images["latter"])  # decoded by the VAE

    out = probe_main(["auc", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "auc"), *prompt, "--inputs", "1", "--masks", "8", "--samples", "16", "--stride", "16", *FAST])
    curves = torch.load(out / "auc.pt", weights_only=True)
    for mode in ("insertion", "deletion"):  # every method starts from the same state and ends at the same one
        ends = torch.stack([curves[f"{method}/{mode}"][0, [0, -1]] for method in ("rise", "cam", "lime", "random")])
        assert torch.allclose(ends, ends[:1].expand_as(ends), atol=1e-5), mode

    triples = ["--triple", '[[a red cat, "on", the mat]]']  # YAML reads a bare on as true
    out = probe_main(["correlation", "--ckpt", str(tiny_sd), "--out", str(tmp_path / "corr"), *triples, "--schedule.steps", "3", "--schedule.lam", "3"])
    assert json.loads((out / "correlation.json").read_text())["prompts"][0]["roles"] == ["subject"] * 3 + ["relation"] + ["object"] * 2


def test_bad_input_gets_a_clear_error_before_work(unconditional_run, conditional_run, tmp_path, capsys):
    with pytest.raises(SystemExit, match="step 9 is outside the run"):
        probe_main(["rise", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "a"), "--steps", "4", "--step", "9"])
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit, match="takes no prompt"):
        probe_main(["cam", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "b"), "--prompt", "a red circle", *FAST])
    with pytest.raises(SystemExit, match="needs a prompt"):
        probe_main(["cam", "--ckpt", str(conditional_run), "--out", str(tmp_path / "c"), *FAST])
    with pytest.raises(SystemExit, match=r"--layers: UNet has no module\(s\) \[.up_blocks.7.\]"):
        probe_main(["cam", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "d"), "--layers", "up_blocks.7", *FAST])
    with pytest.raises(SystemExit, match="hf download CompVis/stable-diffusion-v1-4.*pass --ckpt"):
        probe_main(["relevance", "--ckpt", str(tmp_path / "stable-diffusion-v1-4"), "--out", str(tmp_path / "e"), "--prompt", "a cat"])
    with pytest.raises(SystemExit, match="needs a conditional model"):
        probe_main(["relevance", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "f")])
    assert "inputs" in refusal(["auc", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "g"), "--inputs", "0"], capsys)
    assert not (tmp_path / "g").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not empty"):
        probe_main(["cam", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "full"), *FAST])
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"


def test_configs_are_checked_like_flags_and_late_errors_come_early(unconditional_run, conditional_run, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("masks: 0\n")
    assert "masks" in refusal(["rise", "--config", str(bad), "--ckpt", str(unconditional_run), "--out", str(tmp_path / "a")], capsys)
    bad.write_text("similarity: psnr\n")
    assert "psnr" in refusal(["rise", "--config", str(bad), "--ckpt", str(unconditional_run), "--out", str(tmp_path / "a")], capsys)
    one = tmp_path / "one.yaml"
    one.write_text(f"prompt: {CAPTION}\ninputs: 1\nmethods: [random]\nstride: 64\n")
    out = probe_main(["auc", "--config", str(one), "--ckpt", str(conditional_run), "--out", str(tmp_path / "b"), *FAST])
    assert json.loads((out / "auc.json").read_text())["inputs"] == [{"seed": 0, "prompt": CAPTION}], "one prompt string is one prompt"
    with pytest.raises(SystemExit, match="not a ConceptShapes caption"):
        probe_main(["groundtruth", "--ckpt", str(conditional_run), "--out", str(tmp_path / "c"), "--prompt", "a red circle"])
    with pytest.raises(SystemExit, match="no probe results"):
        probe_main(["correlation", "--ckpt", str(conditional_run), "--out", str(tmp_path / "d"), "--probe_results", str(tmp_path / "none.csv")])
    with pytest.raises(SystemExit, match="DF-CAM explains block layers"):
        probe_main(["cam", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "e"), "--layers", "time_embedding", *FAST])
    with pytest.raises(SystemExit, match=r"words \['purple', 'unicorn'\] are not in this model's caption vocabulary"):
        probe_main(["cam", "--ckpt", str(conditional_run), "--out", str(tmp_path / "f"), "--prompt", "a purple unicorn", *FAST])
    bad.write_text("masks: [1\n")
    assert "did not find expected ','" in refusal(["rise", "--config", str(bad), "--ckpt", str(unconditional_run), "--out", str(tmp_path / "g")], capsys)
    with pytest.raises(SystemExit, match="R2 compares consecutive steps"):
        probe_main(["groundtruth", "--ckpt", str(conditional_run), "--out", str(tmp_path / "h"), "--steps", "1"])
    assert "--mask" in refusal(["rise", "--mask", "3", "--ckpt", str(unconditional_run), "--out", str(tmp_path / "i")], capsys), "no abbreviations"
    # every prompt is checked before the first input is sampled, and --logdir gets no events file
    run_files = set(conditional_run.iterdir())
    prompts = json.dumps([CAPTION, "a purple unicorn"])
    with pytest.raises(SystemExit, match="purple"):
        probe_main(["auc", "--ckpt", str(conditional_run), "--out", str(tmp_path / "j"), "--prompt", prompts, "--logdir", str(conditional_run), *FAST])
    assert set(conditional_run.iterdir()) == run_files
    assert not any((tmp_path / name).exists() for name in "acdfghij")
