"""Probe results against their baselines, on stand-ins whose answer is known: a layer that is the
pooled input gains nothing, a planted feature the pooled input cannot give is learned where it is
planted, and the init weights compared with themselves gain exactly zero."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import binomtest

from diffprobe.data.probe_set import ProbeSet
from diffprobe.diffusion.ddpm import build_scheduler
from diffprobe.probes.baselines import compare, mcnemar_p_value
from diffprobe.probes.pipeline import INPUT_LAYER, probe_input, probe_unet
from helpers import shapes_data
from planted import PlantedFeatureUNet

TIMESTEPS = [0, 100, 999]


@pytest.fixture(scope="module")
def probe_set() -> ProbeSet:
    data = shapes_data(heldout_size=240)
    return ProbeSet.from_dataset(data.heldout_dataset(), data.concepts, size=240, timesteps=TIMESTEPS, seed=0)


def test_mcnemar_is_scipys_exact_binomial_test_on_the_discordant_pairs():
    generator = torch.Generator().manual_seed(0)
    model, baseline = torch.rand(6, 50, generator=generator) < 0.7, torch.rand(6, 50, generator=generator) < 0.5
    p = mcnemar_p_value(model, baseline)
    for row in range(6):
        only_model, only_baseline = int((model[row] & ~baseline[row]).sum()), int((~model[row] & baseline[row]).sum())
        assert float(p[row]) == pytest.approx(binomtest(only_model, only_model + only_baseline, 0.5, alternative="greater").pvalue)
    assert torch.equal(mcnemar_p_value(model, model), torch.ones(6, dtype=torch.float64)), "no discordant pair: no evidence"


def test_a_layer_that_is_the_pooled_input_learns_nothing(probe_set):
    scheduler = build_scheduler()
    input_table = probe_input(scheduler, probe_set, "mean", "ridge")
    assert input_table.layers == [INPUT_LAYER]
    table = probe_unet(PlantedFeatureUNet(position=False), scheduler, probe_set, ["mid_block"], "mean", "ridge")
    learned = compare(table, input_table)
    assert torch.equal(table.hits[0], input_table.hits[0]), "the same features fit the same probe"
    assert torch.all(learned.gain == 0) and not learned.learned.any()
    assert learned.learned_t() == [None] * len(table.concepts)
    k = table.concepts.index("background_colour")
    assert bool(table.significant[0, 0, k]), "decodable is not learned: the input carries background colour"


def test_a_planted_feature_the_input_cannot_give_is_learned_where_it_is_planted(probe_set):
    scheduler = build_scheduler()
    input_table = probe_input(scheduler, probe_set, "mean", "ridge")
    table = probe_unet(PlantedFeatureUNet(position=True), scheduler, probe_set, ["mid_block"], "mean", "ridge")
    learned = compare(table, input_table)
    position = table.concepts.index("position")
    assert bool(learned.learned[0, 0, position]), "position is planted in the features and not linear in the pooled input"
    assert float(learned.gain[0, 0, position]) > 0.3
    assert not bool(learned.learned[0, -1, position]), "at t = 999 the noise has left nothing to plant"
    assert learned.learned_t()[position] in (0, 100)


def test_init_weights_against_themselves_gain_exactly_zero(probe_set):
    scheduler = build_scheduler()
    unet = PlantedFeatureUNet(position=True)
    table = probe_unet(unet, scheduler, probe_set, ["mid_block"], "mean", "ridge")
    learned = compare(table, probe_input(scheduler, probe_set, "mean", "ridge"), init_table=table)
    assert torch.all(learned.gain <= 0) and torch.all(learned.gain_p_value == 1.0) and not learned.learned.any()
    rows = learned.rows(step=0, checkpoint="step=000000.ckpt", weights="ema")
    assert {r["learned"] for r in rows} == {False} and rows[0]["init_accuracy"] == rows[0]["accuracy"]


def test_baselines_must_match_the_table(probe_set):
    scheduler = build_scheduler()
    table = probe_unet(PlantedFeatureUNet(), scheduler, probe_set, ["mid_block"], "mean", "ridge")
    with pytest.raises(ValueError, match="pool 'grid2'"):
        compare(table, probe_input(scheduler, probe_set, "grid2", "ridge"))
