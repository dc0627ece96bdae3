"""``probe.py auc | groundtruth``: how good the saliency maps are, by insertion / deletion AUC
against a random map, and against ConceptShapes' ground truth (object masks, concept words)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from jsonargparse.typing import PositiveFloat, PositiveInt

from diffprobe.choices import CausalMode, Saliency, Score
from diffprobe.commands.common import CommandError, Device, DType, Weights, as_list, command, flag
from diffprobe.commands.outputs import Outputs, check_outputs
from diffprobe.commands.source import load_explain_model, require_conditional, resolve
from diffprobe.report import tb


def _shapes_captions(count: int) -> list[str]:
    from diffprobe.data.shapes import ConceptShapes

    shapes = ConceptShapes(size=count, image_size=16, split="test")
    return [shapes.caption(i) for i in range(count)]


def _inputs(model, seed: int, inputs: int, prompt: list[str], shapes_captions: bool) -> list[tuple[int, str | None]]:
    """(seed, prompt) pairs: ``inputs`` seeds from ``seed``, prompts cycled over the given ones."""
    seeds = [seed + i for i in range(inputs)]
    if not model.conditional:
        if prompt or shapes_captions:
            raise CommandError("this model is unconditional: leave out --prompt / --shapes_captions")
        return [(s, None) for s in seeds]
    prompts = prompt + (_shapes_captions(inputs) if shapes_captions else [])
    if not prompts:
        raise CommandError(
            "this model is conditional: give --prompt (one, or a list: --prompt '[a red circle ..., a blue square ...]') or --shapes_captions true"
        )
    return [(s, prompts[i % len(prompts)]) for i, s in enumerate(seeds)]


def _saliency(method: str, model, step, *, masks: int, samples: int, batch_size: int, seed: int):
    """One saliency map (h, w) at x_t's resolution, larger = more important."""
    from diffprobe.explain.auc import random_saliency
    from diffprobe.explain.cam import df_cam
    from diffprobe.explain.lime import lime_saliency
    from diffprobe.explain.rise import df_rise

    if method == "rise":
        return df_rise(model, step, num_masks=masks, batch_size=batch_size, seed=seed).saliency
    if method == "cam":
        return df_cam(model, step).total
    if method == "lime":
        return lime_saliency(model, step, num_samples=samples, batch_size=batch_size, seed=seed).saliency
    return random_saliency(tuple(step.x_t.shape[-2:]), seed)


MODES: tuple[CausalMode, ...] = ("insertion", "deletion")


def _causal_curves(model, pairs, encoded_prompts: dict, methods, *, steps: int, step: int, score: Score, stride, masks: int, samples: int, batch_size: int):
    """Per (method, mode) the insertion / deletion curve of every input, and each method's seconds."""
    from diffprobe.explain.auc import causal_curve
    from diffprobe.explain.run import explain_step

    curves: dict[tuple[str, CausalMode], list] = {(method, mode): [] for method in methods for mode in MODES}  # lists of (steps,) tensors
    seconds = {method: 0.0 for method in methods}
    for input_seed, text in pairs:
        explained = explain_step(model, prompt=encoded_prompts[text], seed=input_seed, num_inference_steps=steps, step=step)
        for method in methods:
            started = time.perf_counter()
            saliency = _saliency(method, model, explained, masks=masks, samples=samples, batch_size=batch_size, seed=input_seed)
            seconds[method] += time.perf_counter() - started
            for mode in MODES:
                curves[method, mode].append(causal_curve(model, explained, saliency, mode=mode, score=score, stride=stride, batch_size=batch_size))
    return curves, seconds


def _write_auc(outputs: Outputs, curves: dict, seconds: dict, pairs, methods, *, score: Score, step: int, steps: int) -> None:
    """The AUCs (JSON, TensorBoard, terminal), the averaged curves (figure, .pt)."""
    import torch

    from diffprobe.explain.auc import better_auc, normalised_auc
    from diffprobe.report import viz

    modes = MODES
    summary = {key: normalised_auc(torch.stack(value)) for key, value in curves.items()}
    results = {
        method: {mode: {"auc": summary[method, mode].auc, "better": better_auc(mode, score)} for mode in modes}
        | {"seconds_per_input": seconds[method] / len(pairs)}
        for method in methods
    }
    for (method, mode), item in summary.items():
        outputs.scalar(tb.explain_tag("auc", f"{mode}_{score}", method), item.auc)
    panels = {
        f"{mode} ({score}; {better_auc(mode, score)} AUC is better)": {
            f"{method} {summary[method, mode].auc:.3f}": (
                torch.linspace(0, 1, len(summary[method, mode].curve)).tolist(),
                summary[method, mode].curve.tolist(),
            )
            for method in methods
        }
        for mode in modes
    }
    title = f"insertion / deletion at step {step} of {steps}, {len(pairs)} inputs"
    outputs.figure("auc_curves", viz.line_panels(panels, title, "fraction of positions moved", "score (min-max)"), tb.explain_tag("auc", "curves"))
    numbers = {"inputs": [{"seed": s, "prompt": p} for s, p in pairs], "step": step, "steps": steps, "score": score, "methods": results}
    outputs.save("auc", numbers, {f"{method}/{mode}": torch.stack(curves[method, mode]) for method, mode in curves})
    for method in methods:
        print(
            f"{method:>7}: insertion AUC {results[method]['insertion']['auc']:.3f}, deletion AUC {results[method]['deletion']['auc']:.3f}"
        )
    print(
        f"({score}: insertion {better_auc('insertion', score)} is better, deletion {better_auc('deletion', score)} is better) -> {outputs.out}"
    )


@command
def auc(
    ckpt: str, out: str, inputs: PositiveInt = 8, methods: tuple[Saliency, ...] = ("rise", "cam", "lime", "random"), score: Score = "mse",
    stride: PositiveInt | None = None, masks: PositiveInt = 500, samples: PositiveInt = 1000, batch_size: PositiveInt = 64,
    prompt: list[str] | str | None = None, shapes_captions: bool = False, seed: int = 0, steps: PositiveInt = 20, step: int = 15,
    guidance: float | None = None, weights: Weights = "ema", logdir: str | None = None, device: Device = "auto", dtype: DType = "float32", scale: PositiveInt = 8,
) -> Path:  # fmt: skip
    """Insertion / deletion AUC of saliency methods against a random map, averaged over inputs.

    Args:
        inputs: number of inputs (seeds from --seed) the curves are averaged over
        methods: saliency methods to compare
        score: score of each state against the true x_{t-1}
        stride: positions moved per state (default: 1/32 of them)
        masks: DF-RISE masks
        samples: LIME samples
        prompt: prompts of a conditional model, cycled over the inputs
        shapes_captions: prompts from ConceptShapes' test captions (conditional ConceptShapes models)
    """

    from diffprobe.explain.run import check_step

    check_outputs(out, logdir)
    if not methods:
        raise CommandError("--methods is empty; give at least one of rise, cam, lime, random")
    with flag("--step"):
        check_step(step, steps)
    source = resolve(ckpt)
    model, global_step = load_explain_model(source.newest, weights=weights, device=device, guidance=guidance, dtype=dtype)
    pairs = _inputs(model, seed, inputs, as_list(prompt), shapes_captions)
    with flag("--prompt"):
        encoded_prompts = {text: model.prompt(text) for text in dict.fromkeys(text for _, text in pairs)}  # all, before any sampling
    outputs = Outputs(out, source.logdir(logdir), global_step, scale)
    curves, seconds = _causal_curves(model, pairs, encoded_prompts, methods, steps=steps, step=step, score=score, stride=stride, masks=masks,
                                     samples=samples, batch_size=batch_size)  # fmt: skip
    _write_auc(outputs, curves, seconds, pairs, methods, score=score, step=step, steps=steps)
    return outputs.close()


def _write_groundtruth(outputs: Outputs, report, captions: int, seconds: float) -> None:
    """R1 and R2 figures, the R2 agreement scalar, the JSON and the terminal summary."""
    import torch

    from diffprobe.data.shapes import CONCEPT_NAMES
    from diffprobe.report import viz

    t = report.timesteps
    r1 = {
        "saliency mass inside the object mask": {
            "DF-RISE": (t, report.rise_mass),
            "DF-CAM": (t, report.cam_mass),
            "uniform map (mask area)": (t, report.mask_area),
        },
        "pointing game: peak inside the mask": {
            "DF-RISE": (t, report.rise_pointing),
            "DF-CAM": (t, report.cam_pointing),
            "random peak (mask area)": (t, report.mask_area),
        },
    }
    outputs.figure(
        "r1_saliency_in_object",
        viz.line_panels(r1, f"R1 on ConceptShapes, {captions} captions", "timestep t of the step", "share", invert_x=True),
        tb.explain_tag("groundtruth", "r1"),
    )
    relevance, change = torch.tensor(report.relevance_by_concept), torch.tensor(report.change_by_concept)
    r2 = {
        "token relevance (max over the concept's words)": {c: (t, relevance[:, i].tolist()) for i, c in enumerate(CONCEPT_NAMES)},
        "x0_hat change (share of the concept's total)": {c: (t[1:], change[:, i].tolist()) for i, c in enumerate(CONCEPT_NAMES)},
    }
    title = f"R2: relevance peak = most-changed concept at {report.r2_agreement:.0%} of steps (chance {report.r2_chance:.0%})"
    outputs.figure(
        "r2_relevance_vs_change", viz.line_panels(r2, title, "timestep t of the step", "", invert_x=True), tb.explain_tag("groundtruth", "r2")
    )
    outputs.scalar(tb.explain_tag("groundtruth", "r2_agreement"), report.r2_agreement)
    outputs.save("groundtruth", {"seconds": round(seconds, 1), **asdict(report)})
    print(
        f"R1: DF-RISE mass in mask {sum(report.rise_mass) / len(t):.2f}, DF-CAM {sum(report.cam_mass) / len(t):.2f}, mask area {report.mask_area[0]:.2f}"
    )
    print(f"R2: agreement {report.r2_agreement:.2f} vs chance {report.r2_chance:.2f} ({seconds:.0f} s) -> {outputs.out}")
    degenerate = [item["caption"] for item in report.inputs if not 0.01 <= item["mask_area"] <= 0.9]
    if degenerate:
        print(
            f"warning: the object mask of {len(degenerate)} of {len(report.inputs)} generated images covers almost none or almost all of it "
            "(the model does not draw one object on a plain background yet: train longer); R1 is not meaningful for them"
        )


@command
def groundtruth(
    ckpt: str, out: str, prompt: list[str] | str | None = None, inputs: PositiveInt = 8, masks: PositiveInt = 200, batch_size: PositiveInt = 64,
    mask_threshold: PositiveFloat = 0.15, seed: int = 0, steps: PositiveInt = 20, guidance: float | None = None, weights: Weights = "ema",
    logdir: str | None = None, device: Device = "auto", dtype: DType = "float32", scale: PositiveInt = 8,
) -> Path:  # fmt: skip
    """R1 / R2 of the paper against ConceptShapes' ground truth (conditional ConceptShapes models):
    is the saliency inside the object, and is the most relevant word the concept that changes most.

    Args:
        prompt: ConceptShapes captions to sample (default: --inputs test captions)
        inputs: number of ConceptShapes test captions (one run each) when no --prompt is given
        masks: DF-RISE masks per step
        mask_threshold: colour distance from the background that counts as object
    """

    from diffprobe.explain.groundtruth import check_caption, measure

    check_outputs(out, logdir)
    if steps < 2:
        raise CommandError(f"--steps {steps}: R2 compares consecutive steps; give at least 2")
    captions = as_list(prompt)
    with flag("--prompt"):
        for caption in captions:  # before loading anything
            check_caption(caption)
    source = resolve(ckpt)
    model, global_step = load_explain_model(source.newest, weights=weights, device=device, guidance=guidance, dtype=dtype)
    require_conditional(model, "the ground-truth measurement (ConceptShapes captions, e.g. configs/shapes_conditional.yaml)")
    captions = captions or _shapes_captions(inputs)
    outputs = Outputs(out, source.logdir(logdir), global_step, scale)
    started = time.perf_counter()
    with flag("--ckpt"):
        report = measure(
            model, captions, seed=seed, num_inference_steps=steps, rise_masks=masks, batch_size=batch_size, mask_threshold=mask_threshold
        )
    seconds = time.perf_counter() - started
    _write_groundtruth(outputs, report, len(captions), seconds)
    return outputs.close()
