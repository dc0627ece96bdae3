"""Correlation quantification: Spearman, roles of "subject relation object" prompts, probe files."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch

from diffprobe.commands.probe import probe_main
from diffprobe.explain.correlation import (
    Correlation,
    jsonable,
    parse_triple,
    probe_accuracy_correlations,
    role_relevance_correlation,
    role_totals,
    spearman,
    timestep_relevance_correlation,
)
from diffprobe.probes import results
from diffprobe.probes.table import ProbeTable

TIMESTEPS = [999, 900, 800, 700, 600, 500, 400, 300, 200, 100]


def test_monotone_relations_give_rho_plus_and_minus_one_with_small_p():
    rising = spearman(TIMESTEPS, [t**2 for t in TIMESTEPS])  # monotone, not linear
    falling = spearman(torch.tensor(TIMESTEPS), torch.tensor([-math.exp(t / 300) for t in TIMESTEPS]))
    assert rising.rho == pytest.approx(1.0) and rising.p_value < 1e-6 and rising.n == 10
    assert falling.rho == pytest.approx(-1.0) and falling.p_value < 1e-6


def test_small_samples_get_an_exact_p_value():
    exact = spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert exact.rho == pytest.approx(1.0)
    assert exact.p_value == pytest.approx(2 / 120), "two of the 5! pairings are as extreme"
    assert spearman([1, 2, 3], [3, 1, 2]).p_value == pytest.approx(1.0)


def test_exact_p_values_keep_the_former_enumerations_values():
    # p-values the former hand-written enumeration of all n! pairings gave; ties included, where
    # "two-sided" by doubling the smaller tail would give 1/30 instead of 1/60
    untied = spearman([1, 2, 3, 4, 5, 6, 7, 8], [3, 1, 2, 5, 4, 8, 6, 7])
    assert untied.rho == pytest.approx(5 / 6) and untied.p_value == pytest.approx(31 / 2016) and untied.n == 8
    tied = spearman([1, 2, 2, 3, 4, 5], [1, 1, 1, 2, 3, 3])
    assert tied.rho == pytest.approx(0.9393364366277243) and tied.p_value == pytest.approx(1 / 60)
    assert spearman([1, 2, 3, 4, 5], [0, 0, 0, 0, 1]).p_value == pytest.approx(0.4)


def test_constant_input_gives_nan_with_a_note_and_bad_input_raises():
    flat = spearman([1, 2, 3, 4], [5, 5, 5, 5])
    assert math.isnan(flat.rho) and math.isnan(flat.p_value) and "constant" in flat.note
    with pytest.raises(ValueError, match="equally long"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        spearman([1], [1])
    with pytest.raises(ValueError, match="NaN"):
        spearman([1, 2, 3], [1, float("nan"), 2])
    assert (
        json.dumps(jsonable(flat), allow_nan=False)
        == '{"rho": null, "p_value": null, "n": 4, "note": "y constant: rank correlation undefined"}'
    )


def test_parse_triple_assigns_roles_in_order():
    parsed = parse_triple("a man riding a horse", "man", "riding", "horse")
    assert parsed.words == ["a", "man", "riding", "a", "horse"]
    assert parsed.roles == ["other", "subject", "relation", "other", "object"]
    same = parse_triple("a dog chasing a dog", "dog", "chasing", "dog")
    assert same.roles == ["other", "subject", "relation", "other", "object"]
    phrases = parse_triple("The red ball, on top of a table.", "red ball", "on top of", "table")
    assert phrases.roles == ["other", "subject", "subject", "relation", "relation", "relation", "other", "object"]


def test_parse_triple_matches_sub_word_tokens():
    tokens = ["a</w>", "skate", "board</w>", "under</w>", "a</w>", "man</w>"]
    parsed = parse_triple("a skateboard under a man", "skateboard", "under", "man", words=tokens)
    assert parsed.words == tokens
    assert parsed.roles == ["other", "subject", "subject", "relation", "other", "object"]
    woman = ["a</w>", "wo", "man</w>", "near</w>", "a</w>", "man</w>", "and</w>", "a</w>", "dog</w>"]
    parsed = parse_triple("a woman near a man and a dog", "man", "and", "dog", words=woman)
    assert parsed.roles == ["other", "other", "other", "other", "other", "subject", "relation", "other", "object"]


@pytest.mark.parametrize(
    "subject, relation, obj, message",
    [
        ("woman", "riding", "horse", "subject 'woman' is not in the prompt"),
        ("man", "walking", "horse", "relation 'walking' is not in the prompt .* after the subject"),
        ("horse", "riding", "man", "relation 'riding' is not in the prompt .* after the subject"),
        ("man", "riding", "", "object phrase '' is empty"),
    ],
)
def test_parse_triple_errors_name_the_missing_phrase(subject, relation, obj, message):
    with pytest.raises(ValueError, match=message):
        parse_triple("a man riding a horse", subject, relation, obj)


def test_role_totals_sum_over_steps_and_words():
    relevance = torch.tensor([[0.0, 1.0, 0.5, 0.1, 0.2], [0.2, 0.5, 0.5, 0.3, 0.8], [0.1, 0.0, 1.0, 0.0, 1.0]])
    roles = parse_triple("a man riding a horse", "man", "riding", "horse").roles
    totals = role_totals(relevance, roles)
    assert list(totals) == ["other", "subject", "relation", "object"]
    assert totals["subject"] == pytest.approx(1.5)
    assert totals["relation"] == pytest.approx(2.0)
    assert totals["object"] == pytest.approx(2.0)
    assert totals["other"] == pytest.approx(0.7)
    assert sum(totals.values()) == pytest.approx(float(relevance.sum()))
    with pytest.raises(ValueError, match="one role per word"):
        role_totals(relevance, roles[:4])


def test_timestep_relevance_correlation_per_word_and_role():
    steps = torch.arange(10, dtype=torch.float64)
    # subject relevance falls as t falls (rises with t), object rises as t falls, "a" is constant.
    relevance = torch.stack([torch.ones(10), 10 - steps, steps % 3, torch.ones(10), steps], 1)
    words = ["a", "man", "riding", "a", "horse"]
    result = timestep_relevance_correlation(TIMESTEPS, relevance, words)
    assert list(result) == ["a", "man", "riding", "a#2", "horse"]
    assert result["man"].rho == pytest.approx(1.0) and result["man"].p_value < 1e-6
    assert result["horse"].rho == pytest.approx(-1.0)
    assert math.isnan(result["a"].rho) and result["a"].note
    by_role = role_relevance_correlation(TIMESTEPS, relevance, parse_triple(" ".join(words), "man", "riding", "horse").roles)
    assert by_role["subject"].rho == pytest.approx(1.0) and by_role["object"].rho == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="timesteps"):
        timestep_relevance_correlation(TIMESTEPS[:5], relevance, words)
    json.dumps(jsonable(result), allow_nan=False)


def _table(timesteps: list[int], shape_accuracy: list[float], colour_accuracy: list[float]) -> ProbeTable:
    layers, concepts = ["down_blocks.0", "mid_block"], ["shape", "colour"]
    accuracy = torch.zeros(len(layers), len(timesteps), len(concepts))
    accuracy[:, :, 0] = torch.tensor(shape_accuracy)
    accuracy[0, :, 1] = torch.tensor(colour_accuracy)
    accuracy[1, :, 1] = 0.5  # constant: no correlation defined
    zeros = torch.zeros_like(accuracy)
    return ProbeTable(
        layers=layers,
        timesteps=timesteps,
        concepts=concepts,
        accuracy=accuracy,
        control_accuracy=zeros + 0.3,
        chance=torch.full((2,), 0.25),
        p_value=zeros + 0.01,
        ci_low=zeros,
        ci_high=zeros + 1,
        hits=torch.zeros(*zeros.shape, 50, dtype=torch.bool),
    )


@pytest.fixture
def probe_dir(tmp_path):
    timesteps = sorted(TIMESTEPS)
    ramp = [0.3 + 0.05 * i for i in range(10)]  # rising with t
    old = _table(timesteps, ramp, ramp).rows(step=100, checkpoint="epoch=0-step=100.ckpt", weights="ema")
    new = _table(timesteps, ramp[::-1], [0.4, 0.5, 0.45, 0.6, 0.55, 0.7, 0.65, 0.8, 0.75, 0.9]).rows(
        step=200, checkpoint="epoch=1-step=200.ckpt", weights="ema"
    )
    results.table(tmp_path).write(old + new)  # exactly what probe.py linear writes: probes.csv and probes.json
    return tmp_path


@pytest.mark.parametrize("name", [None, "probes.csv", "probes.json"])
def test_probe_file_correlations_use_the_newest_checkpoint(probe_dir, name):
    result = probe_accuracy_correlations(probe_dir if name is None else probe_dir / name)
    assert set(result) == {(c, layer) for c in ("shape", "colour") for layer in ("down_blocks.0", "mid_block")}
    for layer in ("down_blocks.0", "mid_block"):
        shape = result[("shape", layer)]
        assert shape.rho == pytest.approx(-1.0) and shape.p_value < 1e-6 and shape.n == 10, "step 200 falls with t"
    colour = result[("colour", "down_blocks.0")]
    assert 0.8 < colour.rho < 1.0 and colour.p_value < 0.01
    assert math.isnan(result[("colour", "mid_block")].rho)
    older = probe_accuracy_correlations(probe_dir / "probes.csv", step=100)
    assert older[("shape", "mid_block")].rho == pytest.approx(1.0)
    assert json.loads(json.dumps(jsonable(result), allow_nan=False))["shape/mid_block"]["n"] == 10
    assert asdict(result[("shape", "mid_block")]).keys() == asdict(Correlation(0.0, 0.0, 0)).keys()


def test_probe_file_with_both_weights_needs_a_choice(probe_dir):
    rows = json.loads((probe_dir / "probes.json").read_text())["rows"]
    results.table(probe_dir).write(rows + [{**r, "weights": "raw"} for r in rows])
    with pytest.raises(ValueError, match="weights="):
        probe_accuracy_correlations(probe_dir)
    assert probe_accuracy_correlations(probe_dir, weights="raw")[("shape", "mid_block")].rho == pytest.approx(-1.0)
    selectivity = probe_accuracy_correlations(probe_dir, weights="ema", metric="selectivity")
    assert selectivity[("shape", "mid_block")].rho == pytest.approx(-1.0)


def test_probe_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="probe.py linear"):
        probe_accuracy_correlations(tmp_path)
    (tmp_path / "probes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing"):
        probe_accuracy_correlations(tmp_path / "probes.csv")


def test_the_command_reads_a_probe_file_without_a_model(probe_dir, tmp_path):
    out = probe_main(["correlation", "--out", str(tmp_path / "corr"), "--probe_results", str(probe_dir / "probes.csv")])
    numbers = json.loads((out / "correlation.json").read_text())
    assert numbers["spearman_timestep_vs_probe_accuracy"]  # one entry per concept and layer, no model loaded
    with pytest.raises(SystemExit, match="--triple measures a model's relevance: give the model with --ckpt"):
        probe_main(["correlation", "--out", str(tmp_path / "again"), "--triple", "[[a red circle, left of, a blue square]]"])
    assert not (tmp_path / "again").exists()
