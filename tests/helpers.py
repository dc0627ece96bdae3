"""Helpers the tests share (import them: ``from helpers import refusal``)."""

from __future__ import annotations

import pytest

from diffprobe.commands.probe import probe_main


def refusal(args: list[str], capsys) -> str:
    """What probe.py says when it refuses ``args``: its exit message, or what the argument parser
    wrote to stderr (a flag of the wrong type, an unknown or misspelt key)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        probe_main(args)
    code = exit_info.value.code
    assert code not in (0, None), f"probe.py {args[0]} exited successfully"
    return (code if isinstance(code, str) else "") + capsys.readouterr().err
