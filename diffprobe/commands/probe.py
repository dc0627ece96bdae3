"""``probe.py``: every command on checkpoints, its flags built from the command's signature.

Each command is a typed function (``diffprobe.commands.<area>.<name>``) and the same function is
the Python API. jsonargparse turns its parameters into flags (``--batch_size``), its docstring into
``--help``, and gives every command ``--config file.yaml`` and ``--print_config``; types and ranges
are checked before the command runs, and misspelt or abbreviated flags are errors.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from importlib import import_module

from jsonargparse import ArgumentParser

from diffprobe.commands.common import CommandError
from diffprobe.configs import ProbeConfigFile

# name -> module of the command; the order is probe.py --help's.
COMMANDS = {
    "export": "checkpoints",
    "sample": "checkpoints",
    "linear": "linear",
    "fidelity": "fidelity",
    "rise": "saliency",
    "cam": "saliency",
    "lime": "saliency",
    "schedules": "schedules",
    "relevance": "relevance",
    "auc": "evaluate",
    "groundtruth": "evaluate",
    "correlation": "correlation",
    "intervene": "intervene",
    "story": "story",
    "discover": "discover",
    "hidden": "hidden",
}


class ProbeParser(ArgumentParser):
    """jsonargparse's parser; a list given the way other tools take one (``--timesteps 100,500``)
    is refused with the two ways this one takes it."""

    def error(self, message: str, ex: Exception | None = None):
        key = re.search(r'Parser key "([^"]+)"', message)
        if key and "Expected a <class 'list'>" in message:
            flag = f"--{key.group(1)}"
            message += f"\n  A list is given in YAML: {flag} '[100, 500]' (quoted for the shell), or one item at a time: {flag}+ 100 {flag}+ 500"
        return super().error(message, ex)


def command_function(name: str) -> Callable:
    return getattr(import_module(f"diffprobe.commands.{COMMANDS[name]}"), name)


def _program() -> str:
    return "diffprobe-probe" if sys.argv and sys.argv[0].endswith("diffprobe-probe") else "probe.py"


def probe_parser() -> ArgumentParser:
    program = _program()
    parser = ProbeParser(prog=program, description="diffprobe's tools on checkpoints: probes, explanations, export.", allow_abbrev=False)
    subcommands = parser.add_subcommands(dest="command", required=True)
    for name in COMMANDS:
        function = command_function(name)
        summary = (inspect.getdoc(function) or "").split("\n\n")[0].replace("\n", " ")
        sub = ProbeParser(prog=f"{program} {name}", description=summary, allow_abbrev=False)
        sub.add_argument(
            "--config",
            action=ProbeConfigFile,
            help="a YAML file of this command's settings, or the name of one diffprobe ships (auc, correlation: the paper's settings)",
        )
        sub.add_function_arguments(function, as_positional=False)
        subcommands.add_subcommand(name, sub, help=summary)
    return parser


def probe_main(args: list[str] | None = None):
    """Run one probe.py command; its result (usually the output folder) is returned. A command's
    refusal (CommandError, said in the flags' words) ends the program with its message."""
    parser = probe_parser()
    config = parser.parse_args(sys.argv[1:] if args is None else args)
    name = config.command
    settings = parser.instantiate(config)[name].as_dict()
    settings.pop("config", None)
    try:
        return command_function(name)(**settings)
    except CommandError as error:
        raise SystemExit(f"probe.py {name}: error: {error}") from error
    except OSError as error:  # the machine's, not the flags' (a full disk, an unwritable folder): one line naming the file
        said = error.strerror or str(error)
        raise SystemExit(f"probe.py {name}: error: {said}" + (f": {error.filename}" if error.filename else "")) from error


def main() -> None:
    """The ``diffprobe-probe`` console script (``probe.py`` in a clone does the same)."""
    from diffprobe import cpu

    cpu.configure()  # before torch starts: OpenMP reads its CPU settings once (diffprobe/cpu.py says why)
    probe_main()
