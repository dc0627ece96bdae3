"""probe.py's command layer for every command: help from the docstring, --print_config, a config
file read back, misspelt keys and out-of-range values refused (parser only: nothing is loaded)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import yaml

from diffprobe.commands.probe import COMMANDS, command_function, probe_main
from helpers import REPO, refusal


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_comes_from_the_signature_and_docstring(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        probe_main([name, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    function = command_function(name)
    assert inspect.getdoc(function).split("\n")[0] in " ".join(shown.split())
    for parameter in inspect.signature(function).parameters:
        assert f"--{parameter}" in shown, f"probe.py {name} --help does not show --{parameter}"
    assert "--config" in shown and "--print_config" in shown


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_print_config_reads_back_as_a_config_and_unknown_keys_are_refused(name, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        probe_main([name, "--ckpt", "run", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    settings = yaml.safe_load(printed)
    assert settings["ckpt"] == "run" and set(settings) == set(inspect.signature(command_function(name)).parameters)
    config = tmp_path / "settings.yaml"
    config.write_text(printed)
    with pytest.raises(SystemExit) as exit_info:
        probe_main([name, "--config", str(config), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == settings, "a printed config reads back unchanged"
    config.write_text(printed + "no_such_setting: 1\n")
    assert "no_such_setting" in refusal([name, "--config", str(config)], capsys)


@pytest.mark.parametrize(
    "args, named",
    [
        (["rise", "--masks", "0"], "masks"),
        (["rise", "--keep", "1.0"], "keep"),
        (["rise", "--similarity", "psnr"], "similarity"),
        (["lime", "--ratio", "0"], "ratio"),
        (["auc", "--methods", "[rise, gradcam]"], "methods"),
        (["linear", "--num_images", "9"], "num_images"),
        (["linear", "--pool", "max"], "pool"),
        (["schedules", "--schedule.kinds", "[uniform, middle]"], "schedule.kinds"),
        (["relevance", "--schedule.lam", "-1"], "schedule.lam"),
        (["sample", "--sampler", "euler"], "sampler"),
        (["cam", "--dtype", "float8"], "dtype"),
        (["groundtruth", "--inputs", "0"], "inputs"),
        (["correlation", "--triple", "[[only, two]]"], "triple"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_setting(args, named, tmp_path, capsys):
    message = refusal([*args, "--ckpt", str(tmp_path), "--out", str(tmp_path / "out")], capsys)
    assert named in message and not (tmp_path / "out").exists()


def test_help_is_fast_because_nothing_heavy_is_imported():
    code = "import sys; from diffprobe.commands.probe import probe_parser; probe_parser(); print(sorted(m for m in ('torch', 'diffusers', 'lightning') if m in sys.modules))"
    found = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert found == "[]"


def test_a_command_is_its_own_python_api(tmp_path):
    from diffprobe.commands.common import CommandError
    from diffprobe.commands.saliency import rise

    with pytest.raises(CommandError, match="step 9 is outside the run"):
        rise(ckpt=str(tmp_path), out=str(tmp_path / "out"), steps=4, step=9)
    assert not (tmp_path / "out").exists()
