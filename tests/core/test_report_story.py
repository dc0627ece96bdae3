"""A run's learning story, built from the three tables on a planted history: each number is the one
measured at its step, a number nobody measured stays None, and the figure names every claim."""

from __future__ import annotations

from diffprobe.report.story import learning_story, story_figure


def _probe_rows(step: int, learned: set[int], decodable: set[int]) -> list[dict]:
    return [
        {"weights": "ema", "concept": "shape", "step": step, "t": t, "layer": "mid_block", "learned": t in learned, "significant": t in decodable}
        for t in (0, 100, 500, 999)
    ]


def test_the_story_lines_up_fidelity_probes_and_lock_in_by_step():
    fidelity = [{"weights": "ema", "concept": "shape", "step": s, "value": v} for s, v in ((0, 0.25), (1000, 0.6), (2000, 0.93))]
    fidelity.append({"weights": "raw", "concept": "shape", "step": 2000, "value": 0.1})  # other weights: not in the EMA story
    probes = _probe_rows(0, set(), {0}) + _probe_rows(2000, {0, 100}, {0, 100, 500})
    intervene = {"lock_in": {"ema": {"step=002000.ckpt": {"step": 2000, "concepts": {"shape": {"t_lock": 310.0}}}}}}
    story = learning_story(fidelity, {"shape": 2000}, probes, intervene, command="python train.py fit --config x.yaml", train_minutes=88.5)
    shape = story["concepts"]["shape"]
    assert story["command"] == "python train.py fit --config x.yaml" and story["train_minutes"] == 88.5
    assert [e["step"] for e in shape["over_training"]] == [0, 1000, 2000]
    assert shape["over_training"][1] == {"step": 1000, "fidelity": 0.6, "learned_t": None, "decodable_t": None, "t_lock": None}
    assert shape["over_training"][0]["decodable_t"] == 0 and shape["over_training"][0]["learned_t"] is None, "nothing learned at step 0"
    assert (shape["fidelity_final"], shape["rendered_at_step"], shape["learned_t_final"], shape["decodable_t_final"], shape["t_lock_final"]) == (
        0.93, 2000, 100, 500, 310.0
    )
    figure = story_figure(story, 1000, "learning story")
    labels = {t.get_text() for legend in figure.legends for t in legend.get_texts()}
    assert {"rendered: fidelity", "learned t", "decodable t", "t_lock (decided)"} <= labels


def test_a_concept_measured_by_one_command_only_keeps_none_elsewhere():
    story = learning_story([], {}, _probe_rows(500, {100}, {100}), {})
    shape = story["concepts"]["shape"]
    assert shape["fidelity_final"] is None and shape["rendered_at_step"] is None and shape["t_lock_final"] is None
    assert shape["learned_t_final"] == 100
