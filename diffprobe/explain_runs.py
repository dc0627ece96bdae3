"""``probe.py relevance|auc|correlation``: the explanation commands that span many steps or inputs
(outputs, loading and flags: ``diffprobe.explain_cli``)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import torch

from diffprobe import diffusion, viz
from diffprobe.explain_cli import Outputs, _prompt, check_run_step, load_explain_model


def _schedules(model, ns: argparse.Namespace) -> dict[str, list[int]]:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    window = dict(uniform_steps=ns.window_uniform_steps, window_steps=ns.window_steps, start=ns.window_start, width=ns.window_width)
    try:
        return {kind: diffusion.schedule_timesteps(kind, scheduler, ns.schedule_steps, ns.lam, **window) for kind in ns.schedules}
    except ValueError as error:
        raise SystemExit(str(error)) from error


def schedules_command(ns: argparse.Namespace) -> Path:
    from diffprobe.explain.schedules import schedule_images

    model, global_step = load_explain_model(ns.ckpt, device=ns.device, raw=ns.raw, guidance=ns.guidance, dtype=ns.dtype)
    prompt = _prompt(model, ns.prompt)
    schedules = _schedules(model, ns)
    outputs = Outputs(ns.out, ns.run, global_step, ns.scale)
    started = time.perf_counter()
    images = schedule_images(model, prompt, ns.seeds, schedules)
    seconds = time.perf_counter() - started
    grid = torch.cat([images[name] for name in schedules])  # rows: schedules, columns: seeds
    outputs.image("schedules", viz.image_grid(grid, columns=len(ns.seeds)) * 2 - 1, "explain/schedules/images")
    for name, batch in images.items():
        torch.save(batch, outputs.out / f"{name}.pt")
    outputs.save("schedules", {"seeds": ns.seeds, "prompt": ns.prompt, "timesteps": schedules, "seconds": round(seconds, 3)})
    outputs.close()
    print(f"wrote {outputs.out}/schedules.png (rows: {', '.join(schedules)}; columns: seeds {ns.seeds})")
    return outputs.out


def _conditional_model(ns: argparse.Namespace, needs: str):
    """(model, global step) of a conditional --ckpt; a clear exit for an unconditional one."""
    model, global_step = load_explain_model(ns.ckpt, device=ns.device, raw=ns.raw, guidance=ns.guidance, dtype=ns.dtype)
    if not model.conditional:
        raise SystemExit(
            f"{needs} needs a conditional model (prompts whose tokens can be relevant); this checkpoint is unconditional. "
            "Train one with: python train.py fit --config configs/shapes_conditional.yaml"
        )
    return model, global_step


def relevance_command(ns: argparse.Namespace) -> Path:
    from diffprobe.explain.relevance import relevance_over_run

    model, global_step = _conditional_model(ns, "token relevance")
    prompt = _prompt(model, ns.prompt)
    outputs = Outputs(ns.out, ns.run, global_step, ns.scale)
    schedules = _schedules(model, ns)
    started = time.perf_counter()
    runs = {name: relevance_over_run(model, prompt, seed=ns.seed, timesteps=timesteps) for name, timesteps in schedules.items()}
    seconds = time.perf_counter() - started
    words = prompt.word_tokens
    labels = [f"{i}:{w}" for i, w in enumerate(words)]
    panels = {name: {label: (run.timesteps, run.scores[:, i].tolist()) for i, label in enumerate(labels)} for name, run in runs.items()}
    outputs.figure("relevance_curves", viz.line_panels(panels, f"token relevance per step: {prompt.text!r}", "timestep t", "relevance (min-max per step)", invert_x=True), "explain/relevance/curves")
    totals = {name: run.totals().tolist() for name, run in runs.items()}
    outputs.figure("relevance_totals", viz.grouped_bars(totals, labels, "token relevance summed over the run's steps", "sum of relevance"), "explain/relevance/totals")
    finals = torch.cat([model.decode(run.final) for run in runs.values()])
    outputs.image("relevance_images", viz.image_grid(finals, columns=len(finals)) * 2 - 1, "explain/relevance/images")
    for name, values in totals.items():
        for label, value in zip(labels, values):
            outputs.scalar(f"explain/relevance/{name}/{label}", value)
    numbers = {
        "prompt": prompt.text,
        "words": words,
        "seed": ns.seed,
        "seconds": round(seconds, 3),
        "schedules": {name: {"timesteps": run.timesteps, "scores": run.scores.tolist(), "totals": totals[name]} for name, run in runs.items()},
    }
    outputs.save("relevance", numbers, {name: {"timesteps": run.timesteps, "scores": run.scores, "final": run.final.cpu()} for name, run in runs.items()})
    outputs.close()
    print(f"token relevance under {', '.join(runs)} ({seconds:.1f} s) -> {outputs.out}")
    return outputs.out


def _inputs(model, ns: argparse.Namespace) -> list[tuple[int, str | None]]:
    """(seed, prompt) pairs: ``--inputs`` seeds, prompts cycled from --prompt or ConceptShapes captions."""
    seeds = [ns.seed + i for i in range(ns.inputs)]
    if not model.conditional:
        if ns.prompt or ns.shapes_captions:
            raise SystemExit("this model is unconditional: leave out --prompt / --shapes-captions")
        return [(seed, None) for seed in seeds]
    prompts = list(ns.prompt or [])
    if ns.shapes_captions:
        from diffprobe.data.shapes import ConceptShapes

        shapes = ConceptShapes(size=ns.inputs, image_size=16, split="test")
        prompts += [shapes.caption(i) for i in range(ns.inputs)]
    if not prompts:
        raise SystemExit("this model is conditional: give --prompt (repeat it for several) or --shapes-captions")
    return [(seed, prompts[i % len(prompts)]) for i, seed in enumerate(seeds)]


def method_saliency(method: str, model, step, ns: argparse.Namespace, seed: int) -> torch.Tensor:
    """One saliency map (h, w) at x_t's resolution, larger = more important."""
    from diffprobe.explain.auc import random_saliency
    from diffprobe.explain.cam import df_cam
    from diffprobe.explain.lime import lime_saliency
    from diffprobe.explain.rise import df_rise

    if method == "rise":
        return df_rise(model, step, num_masks=ns.masks, batch_size=ns.batch_size, seed=seed).saliency
    if method == "cam":
        return df_cam(model, step).total
    if method == "lime":
        return lime_saliency(model, step, num_samples=ns.samples, batch_size=ns.batch_size, seed=seed).saliency
    if method == "random":
        return random_saliency(tuple(step.x_t.shape[-2:]), seed)
    raise SystemExit(f"unknown method {method!r}; choose from rise, cam, lime, random")


def auc_command(ns: argparse.Namespace) -> Path:
    from diffprobe.explain.auc import better_auc, causal_curve, normalised_auc
    from diffprobe.explain.run import explain_step

    check_run_step(ns)
    model, global_step = load_explain_model(ns.ckpt, device=ns.device, raw=ns.raw, guidance=ns.guidance, dtype=ns.dtype)
    inputs = _inputs(model, ns)
    outputs = Outputs(ns.out, ns.run, global_step, ns.scale)
    modes = ("insertion", "deletion")
    curves = {(method, mode): [] for method in ns.methods for mode in modes}
    seconds = {method: 0.0 for method in ns.methods}
    for seed, text in inputs:
        step = explain_step(model, prompt=_prompt(model, text), seed=seed, num_inference_steps=ns.steps, step=ns.step)
        for method in ns.methods:
            started = time.perf_counter()
            saliency = method_saliency(method, model, step, ns, seed)
            seconds[method] += time.perf_counter() - started
            for mode in modes:
                curves[method, mode].append(causal_curve(model, step, saliency, mode=mode, score=ns.score, stride=ns.stride, batch_size=ns.batch_size))
    summary = {(method, mode): normalised_auc(torch.stack(curves[method, mode])) for method, mode in curves}
    results = {
        method: {mode: {"auc": summary[method, mode].auc, "better": better_auc(mode, ns.score)} for mode in modes} | {"seconds_per_input": seconds[method] / len(inputs)}
        for method in ns.methods
    }
    for (method, mode), item in summary.items():
        outputs.scalar(f"explain/auc/{mode}_{ns.score}/{method}", item.auc)
    panels = {
        f"{mode} ({ns.score}; {better_auc(mode, ns.score)} AUC is better)": {
            f"{method} {summary[method, mode].auc:.3f}": (torch.linspace(0, 1, len(summary[method, mode].curve)).tolist(), summary[method, mode].curve.tolist()) for method in ns.methods
        }
        for mode in modes
    }
    title = f"insertion / deletion at step {ns.step} of {ns.steps}, {len(inputs)} inputs"
    outputs.figure("auc_curves", viz.line_panels(panels, title, "fraction of positions moved", "score (min-max)"), "explain/auc/curves")
    numbers = {"inputs": [{"seed": s, "prompt": p} for s, p in inputs], "step": ns.step, "steps": ns.steps, "score": ns.score, "methods": results}
    outputs.save("auc", numbers, {f"{method}/{mode}": torch.stack(curves[method, mode]) for method, mode in curves})
    outputs.close()
    for method in ns.methods:
        print(f"{method:>7}: insertion AUC {results[method]['insertion']['auc']:.3f}, deletion AUC {results[method]['deletion']['auc']:.3f}")
    print(f"({ns.score}: insertion {better_auc('insertion', ns.score)} is better, deletion {better_auc('deletion', ns.score)} is better) -> {outputs.out}")
    return outputs.out


def correlation_command(ns: argparse.Namespace) -> Path:
    from diffprobe.explain import correlation
    from diffprobe.explain.relevance import relevance_over_run

    if not ns.triple and not ns.probe_results:
        raise SystemExit("give --triple SUBJECT RELATION OBJECT (repeat for several prompts) and/or --probe-results probes.csv")
    if ns.triple and ns.schedule_steps < 2:
        raise SystemExit(f"--schedule-steps {ns.schedule_steps}: a correlation over timesteps needs at least 2 steps")
    numbers: dict = {}
    if ns.probe_results:  # read and check the probe file before any sampling
        try:
            found = correlation.probe_accuracy_correlations(ns.probe_results, weights=ns.probe_weights, step=ns.probe_step)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"--probe-results {ns.probe_results}: {error}") from error
        numbers["spearman_timestep_vs_probe_accuracy"] = found
    model, global_step = load_explain_model(ns.ckpt, device=ns.device, raw=ns.raw, guidance=ns.guidance, dtype=ns.dtype) if ns.triple else (None, 0)
    if ns.triple and not model.conditional:
        raise SystemExit(
            "--triple needs a conditional model (python train.py fit --config configs/shapes_conditional.yaml trains one); "
            "with an unconditional checkpoint, correlate only probe accuracy: --probe-results <run>/probes/probes.csv"
        )
    outputs = Outputs(ns.out, ns.run, global_step, ns.scale)
    if ns.triple:
        schedules = _schedules(model, ns)
        role_names = ("subject", "relation", "object")
        totals = {name: {role: 0.0 for role in role_names} for name in schedules}
        per_step = {name: {role: ([], []) for role in role_names} for name in schedules}
        per_prompt: list[dict] = []
        prompts = []
        for subject, relation, obj in ns.triple:
            text = f"{subject} {relation} {obj}"
            prompt = _prompt(model, text)
            try:
                roles = correlation.parse_triple(text, subject, relation, obj, words=prompt.word_tokens).roles
            except ValueError as error:
                raise SystemExit(str(error)) from error
            prompts.append({"prompt": text, "roles": roles})
            for name, timesteps in schedules.items():
                run = relevance_over_run(model, prompt, seed=ns.seed, timesteps=timesteps)
                for role, value in correlation.role_totals(run.scores, roles).items():
                    if role in totals[name]:  # words outside the three phrases ("other") are not totalled
                        totals[name][role] += value
                for role in role_names:
                    columns = [i for i, r in enumerate(roles) if r == role]
                    role_relevance = run.scores[:, columns].sum(1).tolist()
                    per_step[name][role][0].extend(run.timesteps)
                    per_step[name][role][1].extend(role_relevance)
                    per_prompt.append({"prompt": text, "schedule": name, "role": role, "rho": correlation.spearman(run.timesteps, role_relevance).rho})
        spearman = {name: {role: correlation.spearman(*per_step[name][role]) for role in role_names} for name in schedules}
        numbers.update(prompts=prompts, role_totals=totals, spearman_timestep_vs_role_relevance=spearman)
        numbers["spearman_note"] = (
            "(t, relevance) pairs are pooled over the prompts' runs, which share their timesteps; the p-values treat the pairs "
            "as independent, so read them as descriptive. spearman_per_prompt has one rho per prompt."
        )
        numbers["spearman_per_prompt"] = per_prompt
        bars = {name: [totals[name][role] for role in role_names] for name in schedules}
        outputs.figure("role_totals", viz.grouped_bars(bars, list(role_names), f"relevance by role, {len(prompts)} prompts", "summed relevance"), "explain/correlation/role_totals")
        for name in schedules:
            for role in role_names:
                outputs.scalar(f"explain/correlation/{name}/{role}_total", totals[name][role])
    outputs.save("correlation", correlation.jsonable(numbers))
    outputs.close()
    print(f"correlations -> {outputs.out}/correlation.json")
    return outputs.out


def groundtruth_command(ns: argparse.Namespace) -> Path:
    from diffprobe.data.shapes import CONCEPT_NAMES, ConceptShapes
    from diffprobe.explain.groundtruth import check_caption, measure

    if ns.steps < 2:
        raise SystemExit(f"--steps {ns.steps}: R2 compares consecutive steps; give at least 2")
    captions = list(ns.prompt or [])
    try:
        for caption in captions:  # before loading anything
            check_caption(caption)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    model, global_step = _conditional_model(ns, "the ground-truth measurement (ConceptShapes captions, e.g. configs/shapes_conditional.yaml)")
    if not captions:
        shapes = ConceptShapes(size=ns.inputs, image_size=16, split="test")
        captions = [shapes.caption(i) for i in range(ns.inputs)]
    outputs = Outputs(ns.out, ns.run, global_step, ns.scale)
    started = time.perf_counter()
    try:
        report = measure(model, captions, seed=ns.seed, num_inference_steps=ns.steps, rise_masks=ns.masks, batch_size=ns.batch_size, mask_threshold=ns.mask_threshold)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    seconds = time.perf_counter() - started
    t = report.timesteps
    r1 = {
        "saliency mass inside the object mask": {"DF-RISE": (t, report.rise_mass), "DF-CAM": (t, report.cam_mass), "uniform map (mask area)": (t, report.mask_area)},
        "pointing game: peak inside the mask": {"DF-RISE": (t, report.rise_pointing), "DF-CAM": (t, report.cam_pointing), "random peak (mask area)": (t, report.mask_area)},
    }
    outputs.figure("r1_saliency_in_object", viz.line_panels(r1, f"R1 on ConceptShapes, {len(captions)} captions", "timestep t of the step", "share", invert_x=True), "explain/groundtruth/r1")
    relevance = torch.tensor(report.relevance_by_concept)
    change = torch.tensor(report.change_by_concept)
    r2 = {
        "token relevance (max over the concept's words)": {c: (t, relevance[:, i].tolist()) for i, c in enumerate(CONCEPT_NAMES)},
        "x0_hat change (share of the concept's total)": {c: (t[1:], change[:, i].tolist()) for i, c in enumerate(CONCEPT_NAMES)},
    }
    title = f"R2: relevance peak = most-changed concept at {report.r2_agreement:.0%} of steps (chance {report.r2_chance:.0%})"
    outputs.figure("r2_relevance_vs_change", viz.line_panels(r2, title, "timestep t of the step", "", invert_x=True), "explain/groundtruth/r2")
    outputs.scalar("explain/groundtruth/r2_agreement", report.r2_agreement)
    outputs.save("groundtruth", {"seconds": round(seconds, 1), **asdict(report)})
    outputs.close()
    print(f"R1: DF-RISE mass in mask {sum(report.rise_mass) / len(t):.2f}, DF-CAM {sum(report.cam_mass) / len(t):.2f}, mask area {report.mask_area[0]:.2f}")
    print(f"R2: agreement {report.r2_agreement:.2f} vs chance {report.r2_chance:.2f} ({seconds:.0f} s) -> {outputs.out}")
    degenerate = [item["caption"] for item in report.inputs if not 0.01 <= item["mask_area"] <= 0.9]
    if degenerate:
        print(
            f"warning: the object mask of {len(degenerate)} of {len(report.inputs)} generated images covers almost none or almost all of it "
            "(the model does not draw one object on a plain background yet: train longer); R1 is not meaningful for them"
        )
    return outputs.out
