"""Flags of the explanation commands of ``probe.py`` and ``--config configs/probe/<file>.yaml``,
whose keys set the flags' defaults (the paper's settings), checked as the flags themselves are."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def odd_positive(text: str) -> int:
    value = positive(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be an odd window size, got {text}")
    return value


def _common(single_prompt: bool = True, seed: bool = True, steps: bool = True, step: bool = True) -> argparse.ArgumentParser:
    """Flags every explanation command shares; ``seed`` / ``steps`` / ``step`` only where the
    command uses them (a flag that does nothing would mislead)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ckpt", required=True, help="a diffprobe .ckpt or run directory, a 'probe.py export' folder, or a Stable Diffusion folder")
    common.add_argument("--out", required=True, help="new folder for the PNGs, .pt maps and JSON")
    common.add_argument("--config", help="YAML whose keys set these flags' defaults (configs/probe/*.yaml: the paper's settings)")
    if single_prompt:
        common.add_argument("--prompt", help="prompt of a conditional model (ConceptShapes caption or Stable Diffusion text)")
    if seed:
        common.add_argument("--seed", type=int, default=0, help="seed of the sampling run (the first one when there are several)")
    if steps:
        common.add_argument("--steps", type=positive, default=20, help="DDIM sampling steps of the run (paper: 20)")
    if step:
        common.add_argument("--step", type=int, default=15, help="0-based index of the explained step in the run, 0 = most noisy (paper: 15)")
    common.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's; Stable Diffusion 7.5)")
    common.add_argument("--raw", action="store_true", help="raw instead of EMA weights (diffprobe .ckpt only; exports hold EMA weights)")
    common.add_argument("--run", help="a run directory whose TensorBoard gets the images and numbers too")
    common.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    common.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="Stable Diffusion weights' dtype (GPU: float16); diffprobe models stay float32")
    common.add_argument("--scale", type=int, default=8, help="upscale factor of the PNGs")
    return common


def _schedule_flags(parser: argparse.ArgumentParser, steps_alias: bool = False) -> None:
    parser.add_argument("--schedules", nargs="+", default=["uniform", "early", "latter"], choices=["uniform", "early", "latter", "window"])
    names = ["--schedule-steps", "--steps"] if steps_alias else ["--schedule-steps"]
    parser.add_argument(*names, dest="schedule_steps", type=positive, default=30, help="N, steps of the uniform / early / latter schedules (paper: 30)")
    parser.add_argument("--lam", type=float, default=60, help="lambda of the exponential schedules (paper: 60)")
    parser.add_argument("--window-start", type=int, default=400, help="window schedule: steps packed in [start, start + width]")
    parser.add_argument("--window-width", type=int, default=200)
    parser.add_argument("--window-steps", type=positive, default=20, help="window schedule: steps inside the window")
    parser.add_argument("--window-uniform-steps", type=positive, default=10, help="window schedule: evenly spread steps besides the window")


def add_explain_parsers(commands) -> dict[str, argparse.ArgumentParser]:
    """Add the explanation subcommands to probe.py's subparsers; returns them by name."""
    from diffprobe import explain_runs
    from diffprobe.explain.similarity import SIMILARITIES
    from diffprobe.explain_cli import cam_command, lime_command, rise_command

    parsers = {}
    rise = parsers["rise"] = commands.add_parser("rise", parents=[_common()], allow_abbrev=False, help="DF-RISE: which regions of x_t the step recovers (R1)")
    rise.add_argument("--masks", type=positive, default=500, help="number of random masks N (paper: 500)")
    rise.add_argument("--keep", type=probability, default=0.5, help="probability p that a mask keeps a position")
    rise.add_argument("--similarity", choices=SIMILARITIES, default="structure", help="per-position score vs x_{t-1} (paper: SSIM structure term)")
    rise.add_argument("--grid", type=positive, default=None, help="RISE grid masks of this many cells per side (default: per-position masks)")
    rise.add_argument("--window", type=odd_positive, default=15, help="SSIM Gaussian window size")
    rise.add_argument("--sigma", type=float, default=1.5, help="SSIM Gaussian sigma")
    rise.add_argument("--batch-size", type=positive, default=64, help="masked copies per UNet call")
    rise.set_defaults(handler=rise_command)

    cam = parsers["cam"] = commands.add_parser("cam", parents=[_common()], allow_abbrev=False, help="DF-CAM: Grad-CAM at every UNet block (R2)")
    cam.add_argument("--layers", nargs="+", default=None, help="block layers to explain (default: every ResNet, attention and sampler)")
    cam.set_defaults(handler=cam_command)

    lime = parsers["lime"] = commands.add_parser("lime", parents=[_common()], allow_abbrev=False, help="LIME baseline on quickshift superpixels")
    lime.add_argument("--samples", type=positive, default=1000, help="K perturbations (paper: 1000)")
    lime.add_argument("--kernel-width", type=float, default=0.25, help="width of LIME's cosine-distance kernel")
    lime.add_argument("--response", choices=["mean", "similarity"], default="mean", help="'mean' of the predicted x_{t-1} (paper) or its similarity to the true one")
    lime.add_argument("--top", type=int, default=5, help="superpixels shown in lime_top.png")
    lime.add_argument("--kernel-size", type=float, default=None, help="quickshift kernel size (default: min(H, W) / 16 in [1, 4])")
    lime.add_argument("--max-dist", type=float, default=10.0, help="quickshift max_dist (LIME's own 200 suits 512-px images)")
    lime.add_argument("--ratio", type=float, default=0.2, help="quickshift colour/space ratio (LIME's 0.2)")
    lime.add_argument("--batch-size", type=positive, default=64, help="perturbed copies per UNet call (doubled under CFG)")
    lime.set_defaults(handler=lime_command)

    schedules = parsers["schedules"] = commands.add_parser(
        "schedules", parents=[_common(seed=False, steps=False, step=False)], allow_abbrev=False, help="sample the same seeds under uniform / early / latter (/ window) timestep schedules"
    )
    schedules.add_argument("--caption", dest="prompt", help="alias of --prompt")
    schedules.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="one image per seed and schedule")
    _schedule_flags(schedules, steps_alias=True)
    schedules.set_defaults(handler=explain_runs.schedules_command)

    relevance = parsers["relevance"] = commands.add_parser("relevance", parents=[_common(steps=False, step=False)], allow_abbrev=False, help="token relevance per step under uniform / early / latter schedules")
    _schedule_flags(relevance)
    relevance.set_defaults(handler=explain_runs.relevance_command)

    auc = parsers["auc"] = commands.add_parser("auc", parents=[_common(single_prompt=False)], allow_abbrev=False, help="insertion / deletion AUC of saliency methods vs random")
    auc.add_argument("--prompt", action="append", help="prompt(s) of a conditional model, cycled over the inputs (repeat the flag)")
    auc.add_argument("--shapes-captions", action="store_true", help="prompts: ConceptShapes test captions (conditional ConceptShapes models)")
    auc.add_argument("--inputs", type=positive, default=8, help="number of inputs (seeds from --seed) the curves are averaged over")
    auc.add_argument("--methods", nargs="+", default=["rise", "cam", "lime", "random"], choices=["rise", "cam", "lime", "random"])
    auc.add_argument("--score", choices=["mse", "ssim", "cosine"], default="mse", help="score of each state vs the true x_{t-1}")
    auc.add_argument("--stride", type=positive, default=None, help="positions moved per state (default: 1/32 of them)")
    auc.add_argument("--masks", type=positive, default=500, help="DF-RISE masks")
    auc.add_argument("--samples", type=positive, default=1000, help="LIME samples")
    auc.add_argument("--batch-size", type=positive, default=64, help="perturbed copies per UNet call (doubled under CFG)")
    auc.set_defaults(handler=explain_runs.auc_command)

    correlation = parsers["correlation"] = commands.add_parser(
        "correlation", parents=[_common(single_prompt=False, steps=False, step=False)], allow_abbrev=False, help="relevance by subject / relation / object role; Spearman of t vs relevance / probe accuracy"
    )
    correlation.add_argument("--triple", nargs=3, action="append", metavar=("SUBJECT", "RELATION", "OBJECT"), help="one prompt as three phrases (repeat)")
    correlation.add_argument("--probe-results", help="probes.csv written by 'probe.py linear': Spearman of t vs accuracy per concept and layer")
    correlation.add_argument("--probe-weights", choices=["ema", "raw"], default=None, help="which probes of a file holding both")
    correlation.add_argument("--probe-step", type=int, default=None, help="the checkpoint step whose probes to use (default: the newest)")
    _schedule_flags(correlation)
    correlation.set_defaults(handler=explain_runs.correlation_command)

    truth = parsers["groundtruth"] = commands.add_parser(
        "groundtruth", parents=[_common(single_prompt=False, step=False)], allow_abbrev=False, help="R1 / R2 against ConceptShapes' ground truth (conditional ConceptShapes models)"
    )
    truth.add_argument("--prompt", action="append", help="captions to sample (default: --inputs ConceptShapes test captions)")
    truth.add_argument("--inputs", type=positive, default=8, help="number of ConceptShapes test captions (one run each)")
    truth.add_argument("--masks", type=positive, default=200, help="DF-RISE masks per step")
    truth.add_argument("--batch-size", type=positive, default=64, help="perturbed copies per UNet call (doubled under CFG)")
    truth.add_argument("--mask-threshold", type=float, default=0.15, help="colour distance from the background that counts as object")
    truth.set_defaults(handler=explain_runs.groundtruth_command)
    return parsers


def _config_path(args: list[str]) -> Path | None:
    """The last ``--config`` given (argparse keeps the last value of a repeated flag too)."""
    found = None
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            found = Path(args[i + 1])
        elif arg.startswith("--config="):
            found = Path(arg.split("=", 1)[1])
    return found


def _checked_value(path: Path, action: argparse.Action, value):
    """A config value converted and checked as the flag's own parser would (type, choices, nargs)."""
    flag = action.option_strings[0]
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1
    if isinstance(action, argparse._AppendAction):  # e.g. prompt: one string or a list of them
        items = value if isinstance(value, list) else [value]
        return [_checked_value(path, argparse.Action(action.option_strings, action.dest, nargs=action.nargs, type=action.type, choices=action.choices), item) for item in items]
    if many:
        if not isinstance(value, list):
            value = [value]
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            raise SystemExit(f"{path}: {action.dest} needs {action.nargs} values per entry, got {value}")
        return [_checked_value(path, argparse.Action(action.option_strings, action.dest, type=action.type, choices=action.choices), item) for item in value]
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise SystemExit(f"{path}: {action.dest} is a switch: write true or false, got {value!r}")
        return value
    if value is not None and action.type is not None:
        try:
            value = action.type(str(value))
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise SystemExit(f"{path}: {action.dest} ({flag}): {error}") from error
    if action.choices is not None and value not in action.choices:
        raise SystemExit(f"{path}: {action.dest} must be one of {list(action.choices)}, got {value!r}")
    return value


def apply_config(parser: argparse.ArgumentParser, args: list[str]) -> dict:
    """``--config file.yaml``: its keys (flag names, '-' or '_') become the parser's defaults, each
    checked as the flag itself would be.

    Returns the settings of repeatable flags (``--prompt``, ``--triple``): argparse would append
    command-line values to a list default, so they are applied after parsing, and only when the
    command line gives none (a flag always replaces the config's value)."""
    path = _config_path(args)
    if path is None:
        return {}
    if not path.is_file():
        raise SystemExit(f"--config {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SystemExit(f"{path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise SystemExit(f"{path} must hold a mapping of flag names to values, e.g. 'masks: 500'")
    actions = {action.dest: action for action in parser._actions if action.option_strings and action.dest not in ("help", "config")}
    settings = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(settings) - set(actions))
    if unknown:
        raise SystemExit(f"{path}: unknown setting(s) {unknown}; valid: {sorted(actions)}")
    settings = {dest: _checked_value(path, actions[dest], value) for dest, value in settings.items()}
    repeated = {dest: value for dest, value in settings.items() if isinstance(actions[dest], argparse._AppendAction)}
    for dest in settings:
        actions[dest].required = False  # a config may satisfy a required flag
    parser.set_defaults(**{dest: value for dest, value in settings.items() if dest not in repeated})
    return repeated


def apply_repeated(ns: argparse.Namespace, repeated: dict) -> None:
    for dest, value in repeated.items():
        if getattr(ns, dest) is None:
            setattr(ns, dest, value)
