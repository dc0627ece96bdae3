"""The rules probe.py intervene decides by, as pure functions on plain inputs: which probe cell a
concept is steered with, which switch times and windows are valid, how given caption pairs are
grouped, when earlier rows in --out are comparable, and what a rerun skips."""

from __future__ import annotations

import pytest
import torch

from diffprobe.data.shapes import CONCEPT_NAMES, CONCEPTS, caption
from diffprobe.intervene.plans import (
    ProbeCell,
    SteerPlan,
    choose_cell,
    given_pairs,
    shift_lengths,
    source_captions,
    steering_cell,
    steering_values,
    steering_windows,
    switch_times,
)
from diffprobe.intervene.results import compare_settings, measured_units, sorted_rows, table


def _row(layer, t, accuracy, significant=True, step=10, chance=0.25):
    return {"layer": layer, "t": t, "accuracy": accuracy, "chance": chance, "significant": significant, "step": step}


def test_steering_cell_is_the_highest_t_where_a_strong_probe_reads_the_concept():
    rows = [
        _row("mid_block", 0, 1.0),  # the best cell overall sits at t = 0, where the image is finished
        _row("down_blocks.1", 500, 0.7),  # above half the best (0.6 of 1 above chance): strong enough
        _row("mid_block", 500, 0.8),  # ... and the best layer at that t
        _row("mid_block", 900, 0.4),  # significant but weak
        _row("down_blocks.1", 900, 0.9, significant=False),
    ]
    assert steering_cell(rows) == ProbeCell("mid_block", 500)
    # Nothing significant: the rule falls back to every row.
    assert steering_cell([_row("a", 100, 0.3, False), _row("b", 200, 0.26, False)]) == ProbeCell("b", 200)


def test_choose_cell_keeps_an_earlier_calls_cell_unless_told_otherwise():
    rows = [_row("mid_block", 500, 0.8, step=10), _row("mid_block", 100, 0.9, step=20), _row("up_blocks.0", 100, 0.5, step=20)]
    earlier = ProbeCell("mid_block", 500)
    assert choose_cell(rows, earlier=earlier) == earlier  # over training, the same probe is steered with
    assert choose_cell(rows) == ProbeCell("mid_block", 100)  # otherwise the newest step's rule
    assert choose_cell(rows, layer="up_blocks.0", earlier=earlier) == ProbeCell("up_blocks.0", 100)
    assert choose_cell(rows, earlier=ProbeCell("gone", 7)) == ProbeCell("mid_block", 100)  # no longer probed
    assert choose_cell(rows, layer="mid_block", t=500) is None  # not at the newest step


def test_switch_times_windows_values_and_alphas_are_checked():
    assert switch_times([99, 0, 50, 50], 100, [1, 2]) == (0, 50, 99)
    assert switch_times(None, 100, [10, 0]) == (0, 10)
    assert switch_times([100], 100, []) == (100,)  # T: switched before the first step
    with pytest.raises(ValueError, match=r"t_s must be in \[0, 100\]"):
        switch_times([0, 101], 100, [])
    steps = [75, 50, 25, 0]
    assert steering_windows(None, 100, range(99, -1, -1)) == ((0, 20), (20, 40), (40, 60), (60, 80), (80, 100))
    with pytest.raises(ValueError, match="each must be"):
        steering_windows([[50, 20]], 100, steps)
    with pytest.raises(ValueError, match="hold none of the sampler's timesteps"):
        steering_windows([[76, 99]], 100, steps)
    assert steering_values(["black", "navy", "teal"], "background_colour", None, None) == ("black", "navy")
    with pytest.raises(ValueError, match="is not a value of 'background_colour'"):
        steering_values(["black", "navy"], "background_colour", None, "purple")
    with pytest.raises(ValueError, match="both"):
        steering_values(["black", "navy"], "background_colour", "navy", "navy")
    assert shift_lengths([4, 0, 2, 4]) == (0.0, 2.0, 4.0)
    with pytest.raises(ValueError, match="no shift lengths"):
        shift_lengths([])


def test_given_pairs_are_grouped_by_the_one_concept_they_change():
    first = {name: 0 for name in CONCEPT_NAMES}
    second = {**first, "size": 2}
    third = {**first, "shape": 1}
    groups = given_pairs([(caption(first), caption(second)), (caption(first), caption(third))], concept_shapes=True)
    assert set(groups) == {"size", "shape"}
    k = CONCEPT_NAMES.index("size")
    assert groups["size"].second_labels[0, k] == 2 and groups["size"].first_labels[0, k] == 0
    with pytest.raises(ValueError, match="exactly one concept"):
        given_pairs([(caption(first), caption({**second, "shape": 1}))], concept_shapes=True)
    with pytest.raises(ValueError, match="not a ConceptShapes caption"):
        given_pairs([("a red circle", "a blue circle")], concept_shapes=True)
    unscored = given_pairs([("a cat", "a dog")], concept_shapes=False)
    assert list(unscored) == ["pairs"] and unscored["pairs"].second_labels is None


def test_steer_plan_lists_every_variant_and_captions_show_the_source_value():
    labels = torch.zeros(3, len(CONCEPT_NAMES), dtype=torch.long)
    captions = source_captions(labels, CONCEPTS, "background_colour", "teal", lambda row: caption(dict(zip(CONCEPT_NAMES, row.tolist()))))
    assert all(c.endswith("on a teal background") for c in captions)
    plan = SteerPlan(
        "background_colour", ProbeCell("mid_block", 50), "black", "navy", captions, (0.0, 2.0), ((0, 50), (50, 100)), (75, 25), 3
    )
    assert len(plan.settings) == 2 * 2 * 2 and plan.settings[0].direction == "probe" and plan.settings[-1].direction == "random"
    assert plan.record() == {"layer": "mid_block", "t": 50, "source": "black", "target": "navy"}


def test_settings_compare_and_steering_cells_merge_per_concept():
    earlier = {"seed": 0, "probes": {"shape": {"layer": "mid_block", "t": 50}}}
    same_cell_new_concept = compare_settings(
        earlier, {"seed": 0, "probes": {"shape": {"layer": "mid_block", "t": 50}, "size": {"layer": "a", "t": 1}}}
    )
    assert same_cell_new_concept.changed == () and set(same_cell_new_concept.settings["probes"]) == {"shape", "size"}
    other_cell = compare_settings(earlier, {"seed": 0, "probes": {"shape": {"layer": "up", "t": 50}}})
    assert other_cell.changed == ("probes",)
    assert compare_settings(earlier, {"seed": 1, "probes": {}}).changed == ("seed",)
    assert compare_settings({}, {"seed": 1}).changed == ()  # nothing measured yet


def test_a_rerun_skips_units_measured_under_another_name_at_the_same_step(tmp_path):
    rows = [
        {"step": 2, "checkpoint": "step=000002.ckpt", "weights": "ema", "mode": "switch", "concept": "shape", "variant": "switch", "t_switch": t,
         "alpha": None, "window_start": None, "window_end": None, "n": 4, "successes": 1, "rate": 0.25, "ci_low": 0.0, "ci_high": 0.7,
         "others_kept": 1.0}
        for t in (99, 0)
    ]  # fmt: skip
    results = table(tmp_path)
    results.write(sorted_rows(rows), {"measured": [["sd", "ema", "switch", "pairs", 0]]})
    assert [r["t_switch"] for r in results.read_rows()] == [0, 99]
    measured = measured_units(results.read_rows(), results.read_summary())
    assert measured.found_as("last.ckpt", 2, ("ema", "switch", "shape")) == "step=000002.ckpt"  # last.ckpt: a copy of step 2
    assert measured.found_as("step=000002.ckpt", 2, ("raw", "switch", "shape")) is None
    assert measured.found_as("sd", 0, ("ema", "switch", "pairs")) == "sd"  # unscored images leave no rows, only the unit
