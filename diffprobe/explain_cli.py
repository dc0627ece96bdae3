"""``probe.py rise|cam|relevance|lime|auc|correlation|groundtruth``: the explanation tools on a
checkpoint, an exported diffusers folder, or a Stable Diffusion folder.

Every command writes into a new ``--out`` folder: PNG overlays (the map in a colour map over the
decoded x_t and over the final image, as in the paper), the raw maps (``.pt``), a JSON of numbers,
and, with ``--run <run dir>``, the same images and numbers to that run's TensorBoard.
``--config configs/probe/<tool>.yaml`` sets any flag's default (the paper's settings).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

from diffprobe import viz
from diffprobe.explain.model import ExplainModel, from_parts

# ---- loading ----------------------------------------------------------------------------------


def load_explain_model(
    path: str | Path, *, device: str = "cpu", raw: bool = False, guidance: float | None = None, dtype: str = "float32"
) -> tuple[ExplainModel, int]:
    """(model, global step) from a diffprobe .ckpt, a run directory (its newest checkpoint), a folder
    written by ``probe.py export``, or a Stable Diffusion folder. EMA weights unless ``raw``. The
    modules loaded here are this command's own: eval mode, frozen. ``dtype``: Stable Diffusion's
    weights (float16 / bfloat16 halve its memory on a GPU); diffprobe models stay float32."""
    from diffprobe import checkpoint
    from diffprobe.explain.stable_diffusion import DOWNLOAD_HINT, is_stable_diffusion_folder, load_stable_diffusion

    path = Path(path)
    if not path.exists():
        raise SystemExit(
            f"--ckpt {path} does not exist. Give a diffprobe .ckpt or run directory, a folder written by 'probe.py export', "
            f"or a Stable Diffusion folder (to get one, {DOWNLOAD_HINT.format(folder='<folder>')})"
        )
    if path.is_dir() and is_stable_diffusion_folder(path):
        scale = 7.5 if guidance is None else guidance
        return load_stable_diffusion(path, guidance_scale=scale, device=device, dtype=getattr(torch, dtype)), 0
    if path.is_dir() and (path / "unet" / "config.json").exists():
        exported = checkpoint.load_exported(path)
        unet, encoder, scheduler_config = exported.unet, exported.caption_encoder, exported.scheduler.config
        scale = exported.guidance_scale if guidance is None else guidance
        global_step = 0
    else:
        ckpt = checkpoint.find_checkpoints(path)[-1] if path.is_dir() else path
        module = checkpoint.load_module(ckpt)
        with module.ema_weights() if not raw else nullcontext():  # copies taken inside keep the EMA weights
            unet = copy.deepcopy(module.unet)
            encoder = copy.deepcopy(module.caption_encoder) if module.caption_encoder is not None else None
        scheduler_config = module.scheduler.config
        scale = module.hparams.guidance_scale if guidance is None else guidance
        global_step = module.global_step_at_save
    for part in (unet, encoder):
        if part is not None:
            part.to(device).eval().requires_grad_(False)
    return from_parts(unet, scheduler_config, encoder, scale), global_step


# ---- outputs ----------------------------------------------------------------------------------


class Outputs:
    """A new output folder, plus the run's TensorBoard when ``--run`` is given."""

    def __init__(self, out: str | Path, run: str | None, global_step: int, scale: int):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise SystemExit(f"--out {self.out} is a file; give a new folder")
        if self.out.exists() and any(self.out.iterdir()):
            raise SystemExit(f"{self.out} exists and is not empty; choose another --out (diffprobe does not overwrite files)")
        if run is not None and not Path(run).is_dir():
            raise SystemExit(f"--run {run} is not a directory; give a run directory such as runs/quickstart/version_0")
        self.out.mkdir(parents=True, exist_ok=True)
        self.scale, self.global_step = scale, global_step
        self.writer = None
        if run is not None:  # a new events file beside the run's own: nothing of the run is rewritten
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run))

    def image(self, name: str, image: torch.Tensor, tag: str | None = None) -> Path:
        """(3, H, W) in [-1, 1]."""
        image = image.detach().float().cpu()
        path = viz.save_png(viz.to_unit(image), self.out / f"{name}.png", scale=self.scale)
        if self.writer is not None:
            self.writer.add_image(tag or f"explain/{name}", viz.to_unit(image), self.global_step)
        return path

    def overlays(self, name: str, heat: torch.Tensor, model: ExplainModel, step, tag: str) -> None:
        """The map over the decoded x_t and over the final image (the paper's two views)."""
        self.image(f"{name}_xt", viz.heat_overlay(model.decode(step.x_t)[0], heat), f"{tag}/x_t")
        self.image(f"{name}_final", viz.heat_overlay(model.decode(step.final)[0], heat), f"{tag}/final")

    def figure(self, name: str, figure, tag: str | None = None) -> None:
        figure.savefig(self.out / f"{name}.png")
        if self.writer is not None:
            self.writer.add_figure(tag or f"explain/{name}", figure, self.global_step)
        else:
            import matplotlib.pyplot as plt

            plt.close(figure)

    def scalar(self, tag: str, value: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, self.global_step)

    def save(self, name: str, numbers: dict, tensors: dict | None = None) -> None:
        (self.out / f"{name}.json").write_text(json.dumps(numbers, indent=1))
        if tensors is not None:
            torch.save(tensors, self.out / f"{name}.pt")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _step_tag(tool: str, step) -> str:
    return f"explain/{tool}/step{step.index:02d}_t{step.t:04d}"


def _prepare(ns: argparse.Namespace, validate=None):
    """Model, the explained step and the outputs shared by rise / cam / lime; ``validate(model)``
    checks tool settings against the model before the sampling run."""
    from diffprobe.explain.run import explain_step

    check_run_step(ns)  # before loading anything
    model, global_step = load_explain_model(ns.ckpt, device=ns.device, raw=ns.raw, guidance=ns.guidance, dtype=ns.dtype)
    prompt = _prompt(model, ns.prompt)
    if validate is not None:
        validate(model)
    outputs = Outputs(ns.out, ns.run, global_step, ns.scale)
    step = explain_step(model, prompt=prompt, seed=ns.seed, num_inference_steps=ns.steps, step=ns.step)
    return model, step, outputs


def check_run_step(ns: argparse.Namespace) -> None:
    from diffprobe.explain.run import check_step

    try:
        check_step(ns.step, ns.steps)
    except ValueError as error:
        raise SystemExit(str(error)) from error


def _prompt(model: ExplainModel, text):
    try:
        return model.prompt(text)
    except ValueError as error:
        raise SystemExit(str(error)) from error


def _step_numbers(step, seconds: float) -> dict:
    return {"step": step.index, "t": step.t, "timesteps": step.timesteps, "seed": step.seed, "prompt": None if step.prompt is None else step.prompt.text, "seconds": round(seconds, 3)}


# ---- commands ---------------------------------------------------------------------------------


def rise_command(ns: argparse.Namespace) -> Path:
    from diffprobe.explain.rise import df_rise
    from diffprobe.explain.run import normalise_map

    model, step, outputs = _prepare(ns)
    started = time.perf_counter()
    result = df_rise(
        model, step, num_masks=ns.masks, keep_probability=ns.keep, similarity=ns.similarity, grid=ns.grid, batch_size=ns.batch_size, window=ns.window, sigma=ns.sigma, seed=ns.seed, progress=True
    )
    seconds = time.perf_counter() - started
    outputs.overlays("rise", normalise_map(result.saliency), model, step, _step_tag("rise", step))
    settings = {"masks": ns.masks, "keep": ns.keep, "similarity": ns.similarity, "grid": ns.grid, "window": ns.window, "sigma": ns.sigma}
    outputs.save("rise", {**_step_numbers(step, seconds), **settings}, {"saliency": result.saliency, "x_t": step.x_t.cpu(), "final": step.final.cpu()})
    outputs.close()
    print(f"DF-RISE of {step.describe()}: {ns.masks} masks in {seconds:.1f} s -> {outputs.out}")
    return outputs.out


def cam_command(ns: argparse.Namespace) -> Path:
    from diffprobe.capture.gradients import block_layers
    from diffprobe.explain.cam import df_cam

    def validate(model):
        modules = dict(model.unet.named_modules())
        unknown = [name for name in ns.layers or [] if name not in modules or name == ""]
        if unknown:
            raise SystemExit(f"unknown layer(s) {unknown}; this UNet's block layers are {block_layers(model.unet)}")

    model, step, outputs = _prepare(ns, validate)
    started = time.perf_counter()
    try:
        result = df_cam(model, step, layers=ns.layers)
    except (ValueError, RuntimeError) as error:  # e.g. a layer whose output is not a feature map of the UNet's graph
        raise SystemExit(f"{error}; DF-CAM explains block layers: {block_layers(model.unet)}") from error
    seconds = time.perf_counter() - started
    tag = _step_tag("cam", step)
    outputs.overlays("cam", result.total, model, step, tag)
    base = model.decode(step.x_t)[0]
    overlays = {name: viz.heat_overlay(base, heat) for name, heat in result.layer_maps.items()}
    outputs.figure("cam_layers", viz.image_panels(overlays, f"DF-CAM per layer, {step.describe()}"), f"{tag}/layers")
    numbers = {**_step_numbers(step, seconds), "layers": list(result.layer_maps)}
    outputs.save("cam", numbers, {"total": result.total, "layer_maps": result.layer_maps, "x_t": step.x_t.cpu(), "final": step.final.cpu()})
    outputs.close()
    print(f"DF-CAM of {step.describe()} over {len(result.layer_maps)} layers in {seconds:.1f} s -> {outputs.out} (cam_layers.png: one overlay per layer, in forward order)")
    return outputs.out


def lime_command(ns: argparse.Namespace) -> Path:
    from diffprobe.explain.lime import lime_saliency
    from diffprobe.explain.run import normalise_map

    model, step, outputs = _prepare(ns)
    started = time.perf_counter()
    result = lime_saliency(
        model, step, num_samples=ns.samples, kernel_width=ns.kernel_width, response=ns.response, kernel_size=ns.kernel_size, max_dist=ns.max_dist,
        ratio=ns.ratio, batch_size=ns.batch_size, seed=ns.seed, top_k=ns.top, progress=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    tag = _step_tag("lime", step)
    outputs.overlays("lime", normalise_map(result.saliency), model, step, tag)
    target = model.decode(step.x_prev)[0].cpu()
    top = torch.isin(result.image_segments, torch.as_tensor(result.top_segments))
    outputs.image("lime_top", torch.where(top, target, torch.full_like(target, -1)), f"{tag}/top_segments")
    numbers = {**_step_numbers(step, seconds), "samples": ns.samples, "kernel_width": ns.kernel_width, "response": ns.response, "top_segments": [int(s) for s in result.top_segments]}
    numbers["coefficients"] = [float(c) for c in result.coefficients]
    outputs.save("lime", numbers, {"saliency": result.saliency, "segments": result.segments, "image_segments": result.image_segments, "coefficients": result.coefficients})
    outputs.close()
    print(f"LIME of {step.describe()}: {ns.samples} samples in {seconds:.1f} s -> {outputs.out}")
    return outputs.out


# ---- flags ------------------------------------------------------------------------------------


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
