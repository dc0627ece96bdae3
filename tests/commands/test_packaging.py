"""What the installed package needs: the bundled configs (the same files as the repository's
configs/, shipped as package data, addressable by bare name) and console scripts that set the CPU
defaults before torch loads. CI builds the wheel and runs both scripts from an empty folder."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

from diffprobe.commands.probe import probe_main
from diffprobe.commands.train import train_main
from diffprobe.configs import BUNDLED, bundled, resolve
from helpers import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _yaml_files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*.yaml"))}


def test_bundled_configs_are_the_repositorys_configs():
    repository, package = _yaml_files(REPO / "configs"), _yaml_files(BUNDLED)
    differ = sorted(name for name in repository.keys() | package.keys() if repository.get(name) != package.get(name))
    assert not differ, (
        f"configs/ and diffprobe/configs/ differ in {differ}: edit configs/, then copy it into the package: "
        "cp configs/*.yaml diffprobe/configs/ && cp configs/probe/*.yaml diffprobe/configs/probe/"
    )


def test_the_wheel_ships_every_bundled_config():
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["diffprobe.configs"]
    missing = [name for name in _yaml_files(BUNDLED) if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)]
    assert not missing, f"add a package-data pattern for {missing} in pyproject.toml"


@pytest.mark.parametrize("script", ["diffprobe-train", "diffprobe-probe"])
def test_console_scripts_load_no_torch_before_their_main(script):
    module, function = PYPROJECT["project"]["scripts"][script].split(":")
    check = (
        f"import importlib, sys; main = getattr(importlib.import_module({module!r}), {function!r}); "
        "assert callable(main); assert 'torch' not in sys.modules, 'torch loaded before main() set the CPU defaults'"
    )
    subprocess.run([sys.executable, "-c", check], check=True, cwd=REPO)


def test_a_bare_name_is_a_bundled_config_and_a_file_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve("quickstart") == resolve("quickstart.yaml") == str(BUNDLED / "quickstart.yaml")
    assert resolve("auc", "probe") == str(BUNDLED / "probe/auc.yaml") and bundled("auc") is None
    assert resolve("configs/quickstart.yaml") == "configs/quickstart.yaml", "a path is never redirected"
    (tmp_path / "quickstart.yaml").write_text("seed_everything: 1\n")
    assert resolve("quickstart.yaml") == "quickstart.yaml", "a file in the working folder wins"


def test_train_fit_reads_the_bundled_quickstart_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as printed:
        train_main(["fit", "--config", "quickstart", "--print_config"])
    assert printed.value.code in (0, None)
    out = capsys.readouterr().out
    assert "name: quickstart" in out and "save_dir: runs" in out, "the quick start writes under ./runs"
    assert not (tmp_path / "runs").exists()


def test_an_unknown_config_name_lists_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as refused:
        train_main(["fit", "--config", "quickstrat"])
    assert refused.value.code == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("error: ") and "'quickstrat'" in first and "quickstart" in first.split("'quickstrat'")[1]


def test_probe_commands_read_bundled_probe_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as printed:
        probe_main(["auc", "--config", "auc", "--print_config"])
    assert printed.value.code in (0, None) and "inputs: 64" in capsys.readouterr().out
