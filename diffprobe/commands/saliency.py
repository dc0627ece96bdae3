"""``probe.py rise | cam | lime``: saliency maps of one step of a seeded DDIM sampling run.

Each writes into a new ``out`` folder the map over the decoded x_t and over the final image (the
paper's two views), the raw maps (``.pt``) and a JSON of numbers; and the same to TensorBoard
(``--logdir``, by default the run of ``--ckpt``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from jsonargparse.typing import OpenUnitInterval, PositiveFloat, PositiveInt

from diffprobe.choices import Response, Similarity
from diffprobe.commands.common import CommandError, Device, DType, Weights, as_list, command, flag
from diffprobe.commands.outputs import Outputs, check_outputs, step_numbers, step_tag
from diffprobe.commands.source import load_explain_model, resolve


def explained_step(flags: dict, check_model: Callable | None = None):
    """(model, explained step, outputs) shared by the single-step tools, from a command's
    ``locals()`` (its flags: ckpt, out, prompt, seed, steps, step, guidance, weights, logdir, device,
    dtype, scale); ``check_model(model)`` checks the tool's settings against the model before the
    sampling run."""
    from diffprobe.explain.run import check_step, explain_step

    check_outputs(flags["out"], flags["logdir"])  # before loading anything
    with flag("--step"):
        check_step(flags["step"], flags["steps"])
    source = resolve(flags["ckpt"])
    model, global_step = load_explain_model(
        source.newest, weights=flags["weights"], device=flags["device"], guidance=flags["guidance"], dtype=flags["dtype"]
    )
    with flag("--prompt"):
        encoded = model.prompt(flags["prompt"])
    if check_model is not None:
        check_model(model)
    outputs = Outputs(flags["out"], source.logdir(flags["logdir"]), global_step, flags["scale"], model=source.newest.name)
    explained = explain_step(model, prompt=encoded, seed=flags["seed"], num_inference_steps=flags["steps"], step=flags["step"])
    return model, explained, outputs


@command
def rise(
    ckpt: str, out: str, masks: PositiveInt = 500, keep: OpenUnitInterval = 0.5, similarity: Similarity = "structure", grid: PositiveInt | None = None,
    window: PositiveInt = 15, sigma: PositiveFloat = 1.5, batch_size: PositiveInt = 64, prompt: str | None = None, seed: int = 0,
    steps: PositiveInt = 20, step: int = 15, guidance: float | None = None, weights: Weights = "ema", logdir: str | None = None, device: Device = "auto",
    dtype: DType = "float32", scale: PositiveInt = 8,
) -> Path:  # fmt: skip
    """DF-RISE: which regions of x_t the explained step recovers (R1 of the paper).

    Args:
        masks: number of random masks N (paper: 500)
        keep: probability p that a mask keeps a position
        similarity: per-position score against the true x_{t-1} (paper: the SSIM structure term)
        grid: RISE grid masks of this many cells per side (default: per-position masks)
        window: SSIM Gaussian window size (odd)
        sigma: SSIM Gaussian sigma
        batch_size: masked copies per UNet call
    """
    from diffprobe.explain.rise import df_rise
    from diffprobe.explain.run import normalise_map
    from diffprobe.explain.similarity import gaussian_window

    with flag("--window"):
        gaussian_window(window, sigma)  # an even window is refused before the sampling run
    model, explained, outputs = explained_step(locals())
    started = time.perf_counter()
    result = df_rise(
        model,
        explained,
        num_masks=masks,
        keep_probability=keep,
        similarity=similarity,
        grid=grid,
        batch_size=batch_size,
        window=window,
        sigma=sigma,
        seed=seed,
        progress=True,
    )
    seconds = time.perf_counter() - started
    outputs.overlays("rise", normalise_map(result.saliency), model, explained, step_tag("rise", explained), "DF-RISE")
    settings = {"masks": masks, "keep": keep, "similarity": similarity, "grid": grid, "window": window, "sigma": sigma}
    outputs.save(
        "rise",
        {**step_numbers(explained, seconds), **settings},
        {"saliency": result.saliency, "x_t": explained.x_t.cpu(), "final": explained.final.cpu()},
    )
    print(f"DF-RISE of {explained.describe()}: {masks} masks in {seconds:.1f} s -> {outputs.out}")
    return outputs.close()


@command
def cam(
    ckpt: str, out: str, layers: list[str] | str | None = None, prompt: str | None = None, seed: int = 0, steps: PositiveInt = 20, step: int = 15,
    guidance: float | None = None, weights: Weights = "ema", logdir: str | None = None, device: Device = "auto", dtype: DType = "float32", scale: PositiveInt = 8,
) -> Path:  # fmt: skip
    """DF-CAM: Grad-CAM of the predicted noise at every UNet block (R2 of the paper).

    Args:
        layers: block layers to explain (default: every ResNet, attention and sampler of the blocks)
    """
    from diffprobe.capture import check_layers
    from diffprobe.capture.gradients import block_layers
    from diffprobe.explain.cam import df_cam
    from diffprobe.report import viz

    layers = as_list(layers) or None

    def check_model(model) -> None:
        if layers is not None:
            with flag("--layers"):
                check_layers(model.unet, layers, choices=block_layers(model.unet))

    model, explained, outputs = explained_step(locals(), check_model)
    started = time.perf_counter()
    try:
        result = df_cam(model, explained, layers=layers)
    except (ValueError, RuntimeError) as error:  # e.g. a layer whose output is not a feature map of the UNet's graph
        raise CommandError(f"--layers: {error}; DF-CAM explains block layers: {block_layers(model.unet)}") from error
    seconds = time.perf_counter() - started
    tag = step_tag("cam", explained)
    outputs.overlays("cam", result.total, model, explained, tag, "DF-CAM (sum over layers)")
    base = model.decode(explained.x_t)[0]
    overlays = {name: viz.heat_overlay(base, heat) for name, heat in result.layer_maps.items()}
    title = f"DF-CAM per layer over x_t, in forward order ({outputs.model}): {explained.describe()}"
    figure = viz.image_panels(overlays, title, heat_label="Grad-CAM (min-max per layer)")
    outputs.figure("cam_layers", figure, f"{tag}/layers")
    numbers = {**step_numbers(explained, seconds), "layers": list(result.layer_maps)}
    outputs.save(
        "cam", numbers, {"total": result.total, "layer_maps": result.layer_maps, "x_t": explained.x_t.cpu(), "final": explained.final.cpu()}
    )
    print(
        f"DF-CAM of {explained.describe()} over {len(result.layer_maps)} layers in {seconds:.1f} s -> {outputs.out} (cam_layers.png: one overlay per layer, in forward order)"
    )
    return outputs.close()


@command
def lime(
    ckpt: str, out: str, samples: PositiveInt = 1000, kernel_width: PositiveFloat = 0.25, response: Response = "mean", top: PositiveInt = 5,
    kernel_size: PositiveFloat | None = None, max_dist: PositiveFloat = 10.0, ratio: OpenUnitInterval = 0.2, batch_size: PositiveInt = 64,
    prompt: str | None = None, seed: int = 0, steps: PositiveInt = 20, step: int = 15, guidance: float | None = None, weights: Weights = "ema",
    logdir: str | None = None, device: Device = "auto", dtype: DType = "float32", scale: PositiveInt = 8,
) -> Path:  # fmt: skip
    """LIME on quickshift superpixels: the paper's baseline for DF-RISE.

    Args:
        samples: K perturbations (paper: 1000)
        kernel_width: width of LIME's cosine-distance kernel
        response: 'mean' of the predicted x_{t-1} (paper) or its similarity to the true one
        top: superpixels shown in lime_top.png
        kernel_size: quickshift kernel size (default: min(H, W) / 16, in [1, 4])
        max_dist: quickshift max_dist (LIME's own 200 suits 512-pixel images)
        ratio: quickshift colour / space ratio (LIME's 0.2)
    """
    import torch

    from diffprobe.explain.lime import lime_saliency
    from diffprobe.explain.run import normalise_map

    model, explained, outputs = explained_step(locals())
    started = time.perf_counter()
    result = lime_saliency(
        model, explained, num_samples=samples, kernel_width=kernel_width, response=response, kernel_size=kernel_size, max_dist=max_dist,
        ratio=ratio, batch_size=batch_size, seed=seed, top_k=top, progress=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    tag = step_tag("lime", explained)
    outputs.overlays("lime", normalise_map(result.saliency), model, explained, tag, "LIME")
    target = model.decode(explained.x_prev)[0].cpu()
    top_mask = torch.isin(result.image_segments, torch.as_tensor(result.top_segments))
    outputs.image("lime_top", torch.where(top_mask, target, torch.full_like(target, -1)), f"{tag}/top_segments")
    numbers = {
        **step_numbers(explained, seconds),
        "samples": samples,
        "kernel_width": kernel_width,
        "response": response,
        "top_segments": [int(s) for s in result.top_segments],
    }
    numbers["coefficients"] = [float(c) for c in result.coefficients]
    outputs.save(
        "lime",
        numbers,
        {
            "saliency": result.saliency,
            "segments": result.segments,
            "image_segments": result.image_segments,
            "coefficients": result.coefficients,
        },
    )
    print(f"LIME of {explained.describe()}: {samples} samples in {seconds:.1f} s -> {outputs.out}")
    return outputs.close()
