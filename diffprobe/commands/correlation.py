"""``probe.py correlation``: the paper's correlation quantification. Token relevance by subject /
relation / object role under each timestep schedule, Spearman's rho of t against each role's
relevance, and (from ``probe.py linear``'s table) of t against probe accuracy."""

from __future__ import annotations

from pathlib import Path

from jsonargparse.typing import PositiveInt

from diffprobe.commands.common import CommandError, Device, DType, Weights, command, flag
from diffprobe.commands.outputs import Outputs, check_outputs
from diffprobe.commands.schedules import TimestepSchedules
from diffprobe.commands.source import load_explain_model, require_conditional, resolve
from diffprobe.report import tb

ROLES = ("subject", "relation", "object")


def _encoded_triples(model, triples) -> list[tuple[str, object, list[str]]]:
    """(prompt, encoded prompt, role per word) of each triple: checked before any sampling."""
    from diffprobe.explain import correlation

    encoded = []
    with flag("--triple"):
        for subject, relation, obj in triples:
            text = f"{subject} {relation} {obj}"
            prompt = model.prompt(text)
            encoded.append((text, prompt, correlation.parse_triple(text, subject, relation, obj, words=prompt.word_tokens).roles))
    return encoded


def _role_relevance(model, triples, schedules: dict[str, list[int]], seed: int) -> dict:
    """Relevance by role of each encoded triple's run under each schedule: totals, pooled per-step
    pairs and one rho per prompt."""
    from diffprobe.explain import correlation
    from diffprobe.explain.relevance import relevance_over_run

    totals = {name: dict.fromkeys(ROLES, 0.0) for name in schedules}
    pooled: dict[str, dict[str, tuple[list[int], list[float]]]] = {name: {role: ([], []) for role in ROLES} for name in schedules}  # (t, relevance) pairs
    prompts, per_prompt = [], []
    for text, encoded, roles in triples:
        prompts.append({"prompt": text, "roles": roles})
        for name, timesteps in schedules.items():
            run = relevance_over_run(model, encoded, seed=seed, timesteps=timesteps)
            by_role = correlation.role_relevance(run.scores, roles)
            for role in ROLES:  # words outside the three phrases ("other") are not totalled
                values = by_role[role].tolist() if role in by_role else [0.0] * len(run.timesteps)
                totals[name][role] += sum(values)
                pooled[name][role][0].extend(run.timesteps)
                pooled[name][role][1].extend(values)
                per_prompt.append({"prompt": text, "schedule": name, "role": role, "rho": correlation.spearman(run.timesteps, values).rho})
    spearman = {name: {role: correlation.spearman(*pooled[name][role]) for role in ROLES} for name in schedules}
    return {
        "prompts": prompts,
        "role_totals": totals,
        "spearman_timestep_vs_role_relevance": spearman,
        "spearman_note": (
            "(t, relevance) pairs are pooled over the prompts' runs, which share their timesteps; the p-values treat the pairs "
            "as independent, so read them as descriptive. spearman_per_prompt has one rho per prompt."
        ),
        "spearman_per_prompt": per_prompt,
    }


@command
def correlation(
    out: str, ckpt: str | None = None, triple: list[tuple[str, str, str]] | None = None, probe_results: str | None = None, probe_weights: Weights | None = None,
    probe_step: int | None = None, schedule: TimestepSchedules = TimestepSchedules(), seed: int = 0, guidance: float | None = None,
    weights: Weights = "ema", logdir: str | None = None, device: Device = "auto", dtype: DType = "float32", scale: PositiveInt = 8,
) -> Path:  # fmt: skip
    """Relevance by subject / relation / object role; Spearman's rho of t against role relevance
    and against probe accuracy.

    Args:
        ckpt: the conditional model whose relevance --triple measures (not needed for --probe_results alone)
        triple: prompts, each as three phrases: --triple '[[a red cat, "on", the mat]]' (conditional models; quote words YAML reads as true / false: on, off, yes, no)
        probe_results: probes.csv written by 'probe.py linear': Spearman of t against accuracy per concept and layer
        probe_weights: which probes of a file holding both EMA and raw ones
        probe_step: the checkpoint step whose probes to use (default: the newest)
    """
    from diffprobe.explain import correlation as stats
    from diffprobe.report import viz

    check_outputs(out, logdir)
    if not triple and not probe_results:
        raise CommandError("give --triple (a list of [subject, relation, object] phrases) and/or --probe_results probes.csv")
    if triple and ckpt is None:
        raise CommandError("--triple measures a model's relevance: give the model with --ckpt (a run, .ckpt or export folder)")
    if triple and schedule.steps < 2:
        raise CommandError(f"--schedule.steps {schedule.steps}: a correlation over timesteps needs at least 2 steps")
    numbers: dict = {}
    if probe_results:  # read and check the probe file before any sampling
        with flag(f"--probe_results {probe_results} (--probe_weights picks the weights)"):
            numbers["spearman_timestep_vs_probe_accuracy"] = stats.probe_accuracy_correlations(
                probe_results, weights=probe_weights, step=probe_step
            )
    model, global_step, tensorboard = None, 0, Path(logdir) if logdir else None
    if triple:
        assert ckpt is not None  # refused above
        source = resolve(ckpt)
        tensorboard = source.logdir(logdir)
        model, global_step = load_explain_model(source.newest, weights=weights, device=device, guidance=guidance, dtype=dtype)
        require_conditional(model, "--triple")
        timesteps = schedule.timesteps(model.scheduler_config)
        encoded = _encoded_triples(model, triple)
    outputs = Outputs(out, tensorboard, global_step, scale)
    if triple:
        numbers.update(_role_relevance(model, encoded, timesteps, seed))
        totals = numbers["role_totals"]
        bars = {name: [totals[name][role] for role in ROLES] for name in timesteps}
        figure = viz.grouped_bars(bars, list(ROLES), f"relevance by role, {len(triple)} prompts", "summed relevance", "role in the prompt")
        outputs.figure("role_totals", figure, tb.explain_tag("correlation", "role_totals"))
        for name in timesteps:
            for role in ROLES:
                outputs.scalar(tb.explain_tag("correlation", name, f"{role}_total"), totals[name][role])
    outputs.save("correlation", stats.jsonable(numbers))
    print(f"correlations -> {outputs.out}/correlation.json")
    return outputs.close()
