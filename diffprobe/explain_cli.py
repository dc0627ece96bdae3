"""``probe.py rise|cam|lime`` and what every explanation command shares (loading, outputs): the
explanation tools on a checkpoint, an exported diffusers folder, or a Stable Diffusion folder.
Flags and ``--config``: ``diffprobe.explain_flags``; multi-step commands: ``diffprobe.explain_runs``.

Every command writes into a new ``--out`` folder: PNG overlays (the map in a colour map over the
decoded x_t and over the final image, as in the paper), the raw maps (``.pt``), a JSON of numbers,
and, with ``--run <run dir>``, the same images and numbers to that run's TensorBoard.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch

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
        try:
            ckpt = checkpoint.find_checkpoints(path)[-1] if path.is_dir() else path
            module = checkpoint.load_module(ckpt)
        except (FileNotFoundError, checkpoint.LoadError) as error:  # damaged, foreign or unsafe: named in the message
            raise SystemExit(str(error)) from error
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
