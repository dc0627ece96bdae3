"""A run's checkpoint records -> what results.json says of it: learning speeds, the hidden
window, the per-step rates, the concept-space trajectory, lock-in and the probes' gain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from diffprobe.hidden.generate import VARIANTS
from diffprobe.hidden.timeline import LEVEL, first_reach, hidden_window
from diffprobe.probes.stats import wilson_interval


def _rates(records: Sequence[Mapping], variant: str, concept: str | None) -> dict[int, tuple[float, float, float]]:
    """step -> (rate, low, high) of the combination (``concept`` None) or of one concept."""
    rates = {}
    for record in records:
        score = record["variants"].get(variant)
        if score is None:
            continue
        if concept is None:
            rates[record["step"]] = (score["combination"], score["ci_low"], score["ci_high"])
        else:
            rate, n = score["concepts"][concept], score["n"]
            low, high = wilson_interval(torch.tensor([round(rate * n)]), n)
            rates[record["step"]] = (rate, float(low[0]), float(high[0]))
    return rates


def best_gain(rows: Sequence[Mapping]) -> dict[str, dict]:
    """Per concept (and the combination): the (layer, t) where the probes' learned gain on held-out
    images is largest, and the largest t with a positive gain of at least 0.1."""
    result = {}
    for concept in dict.fromkeys(r["concept"] for r in rows):
        own = [r for r in rows if r["concept"] == concept]
        top = max(own, key=lambda r: r["learned_gain"])
        learned = [r["t"] for r in own if r["learned_gain"] >= 0.1]
        result[concept] = {
            "learned_gain": top["learned_gain"], "layer": top["layer"], "t": top["t"], "heldout_accuracy": top["heldout_accuracy"],
            "baseline": max(top["input_accuracy"], top["init_accuracy"]), "largest_learned_t": max(learned) if learned else None,
        }  # fmt: skip
    return result


def summarise_run(name: str, design: Mapping, records: Sequence[Mapping]) -> dict:
    """The results.json entry of one run (records in step order)."""
    records = sorted(records, key=lambda r: r["step"])
    variants = [v for v in VARIANTS if any(v in r["variants"] for r in records)]
    concepts = list(records[0]["variants"]["plain"]["concepts"]) if records else []
    speed = {}
    for variant in variants:
        firsts = {"combination": first_reach(_rates(records, variant, None))}
        firsts.update({c: first_reach(_rates(records, variant, c)) for c in concepts})
        speed[variant] = firsts
    window = hidden_window({v: speed[v]["combination"] for v in variants})
    steps = []
    for record in records:
        entry: dict = {"step": record["step"]}
        entry.update({v: record["variants"][v]["combination"] for v in variants if v in record["variants"]})
        entry["intervals"] = {v: [record["variants"][v]["ci_low"], record["variants"][v]["ci_high"]] for v in variants if v in record["variants"]}
        entry["concepts"] = {v: record["variants"][v]["concepts"] for v in variants if v in record["variants"]}
        entry["probability"] = record["variants"]["plain"]["probability"]
        entry["others_kept"] = {v: record["variants"][v]["others_kept"] for v in variants if v in record["variants"]}
        entry["lock_in"] = {c: v["t_lock"] for c, v in record["lock_in"].items()}
        entry["represented"] = best_gain(record["represented"])
        steps.append(entry)
    return {
        "run": name,
        "concept_signal": {"colour_contrast": design["colour_contrast"], "size_difference": design["size_difference"]},
        "heldout_combination": records[0]["combination"] if records else None,
        "learning_speed": {v: {c: f.record() for c, f in firsts.items()} for v, firsts in speed.items()},
        "reaches_80": {v: speed[v]["combination"].step for v in variants},
        "hidden_window": window.record(),
        "level": LEVEL,
        "steps": steps,
    }

