"""The hidden-capabilities study's core: prompts and interventions, learning speed and the hidden
window, the probe images, and a planted stand-in whose hidden window is known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from diffprobe.data.shapes import CONCEPT_NAMES, CONCEPTS, ShapesDesign, parse_caption, vocabulary
from diffprobe.diffusion.captions import CaptionEncoder
from diffprobe.diffusion.model import DiffusionModel
from diffprobe.hidden import represented
from diffprobe.hidden.generate import InterventionSettings
from diffprobe.hidden.prompts import heldout_prompts, moved_along_values, over_prompted, word_position
from diffprobe.hidden.study import StudySettings, baselines, measure_checkpoint
from diffprobe.hidden.summary import summarise_run
from diffprobe.hidden.timeline import first_reach, hidden_window

COLOUR, SIZE = CONCEPT_NAMES.index("object_colour"), CONCEPT_NAMES.index("size")


def encoder() -> CaptionEncoder:
    torch.manual_seed(0)
    return CaptionEncoder(vocabulary(), max_tokens=16, embedding_dim=16).eval()


# ---- prompts and the two caption interventions ------------------------------------------------


def test_heldout_prompts_all_name_the_combination_and_vary_the_rest():
    prompts = heldout_prompts(("small", "blue"), 40, seed=3)
    assert prompts.combination == {"object_colour": "blue", "size": "small"}
    assert all(parse_caption(c)["object_colour"] == CONCEPTS["object_colour"].index("blue") for c in prompts.captions)
    assert all(parse_caption(c)["size"] == 0 for c in prompts.captions)
    assert [parse_caption(c) for c in prompts.captions] == [dict(zip(CONCEPT_NAMES, row)) for row in prompts.labels.tolist()]
    assert len(set(prompts.labels[:, CONCEPT_NAMES.index("shape")].tolist())) > 1  # the other concepts are drawn


def test_heldout_prompts_refuse_values_that_are_not_caption_words():
    with pytest.raises(ValueError, match="not single caption words"):
        heldout_prompts(("stripes", "blue"), 4)


def test_over_prompting_scales_exactly_the_held_out_words_rows():
    enc, prompts = encoder(), heldout_prompts(("small", "blue"), 3)
    with torch.no_grad():
        plain = enc.encode(list(prompts.captions))
        scaled = over_prompted(enc, prompts.captions, ["small", "blue"], 2.0)
    for row, text in enumerate(prompts.captions):
        held = {word_position(enc.tokenizer, text, w) for w in ("small", "blue")}
        for position in range(plain.shape[1]):
            expected = plain[row, position] * (2.0 if position in held else 1.0)
            torch.testing.assert_close(scaled[row, position], expected)


def test_the_linear_intervention_moves_each_word_away_from_its_concepts_other_values():
    enc, prompts = encoder(), heldout_prompts(("small", "blue"), 2)
    text = prompts.captions[0]
    with torch.no_grad():
        plain = enc.encode([text])[0]
        moved = moved_along_values(enc, [text], prompts.combination, 1.0)[0]
        position = word_position(enc.tokenizer, text, "blue")
        others = [text.replace(" blue ", f" {c} ") for c in CONCEPTS["object_colour"] if c != "blue"]
        mean_other = enc.encode(others)[:, position].mean(0)
    torch.testing.assert_close(moved[position], plain[position] + (plain[position] - mean_other))
    untouched = [p for p in range(plain.shape[0]) if p not in (position, word_position(enc.tokenizer, text, "small"))]
    torch.testing.assert_close(moved[untouched], plain[untouched])


# ---- learning speed and the hidden window ---------------------------------------------------


def test_learning_speed_is_one_over_the_first_step_at_80_percent_with_its_interval():
    rates = {0: (0.0, 0.0, 0.05), 100: (0.7, 0.55, 0.82), 200: (0.84, 0.72, 0.92), 300: (0.75, 0.62, 0.85), 400: (0.97, 0.9, 0.99)}
    reach = first_reach(rates)
    assert (reach.step, reach.earliest, reach.latest, reach.previous, reach.last) == (200, 100, 400, 100, 400)
    record = reach.record()
    assert record["speed"] == pytest.approx(1 / 200)
    assert record["speed_interval"] == pytest.approx([1 / 400, 1 / 100])
    assert reach.interpolated == pytest.approx(100 + 100 * (0.8 - 0.7) / (0.84 - 0.7))
    never = first_reach({0: (0.1, 0.0, 0.3), 500: (0.79, 0.65, 0.88)})
    assert never.step is None and never.speed is None and never.record()["reached"] is False and never.earliest == 500


def test_the_hidden_window_runs_from_the_first_intervention_to_plain_prompting():
    def at(step):
        return first_reach({s: (1.0 if s >= step else 0.0, 0.0, 1.0) for s in (0, 100, 200, 300)}) if step is not None else first_reach({0: (0.0, 0.0, 0.1)})

    window = hidden_window({"plain": at(300), "over_prompting": at(200), "steering": at(100)})
    assert (window.opens, window.closes, window.first_intervention, window.hidden) == (100, 300, "steering", True)
    assert hidden_window({"plain": at(100), "over_prompting": at(200)}).hidden is False
    still_open = hidden_window({"plain": at(None), "over_prompting": at(200)})
    assert (still_open.opens, still_open.closes, still_open.hidden) == (200, None, True)
    assert hidden_window({"plain": at(None), "over_prompting": at(None)}).opens is None


# ---- the probe images ----------------------------------------------------------------------


def test_probes_are_fitted_on_trained_combinations_and_scored_on_the_held_out_one():
    design = ShapesDesign((("small", "blue"),))
    images = represented.combination_images(design, ("small", "blue"), 16, [10, 100], trained=90, heldout=12)
    labels = images.probe_set.labels
    is_held = (labels[:, COLOUR] == CONCEPTS["object_colour"].index("blue")) & (labels[:, SIZE] == 0)
    assert not is_held[images.fit].any() and not is_held[images.trained_test].any()
    assert is_held[images.heldout].all() and len(images.heldout) == 12
    assert set(images.fit.tolist()).isdisjoint(images.trained_test.tolist())


# ---- a planted stand-in with a known hidden window ---------------------------------------------

PLAIN_FROM, INTERVENED_FROM = 300, 100  # the stand-in makes the combination from these steps


class PlantedUNet(nn.Module):
    """Predicts the noise of a known x0: +0.5 everywhere (the held-out combination, for the stand-in
    reader) when it makes it, -0.5 otherwise. It makes it from PLAIN_FROM under a plain caption,
    and from INTERVENED_FROM when the caption's rows are longer than LayerNorm's (over-prompting,
    the linear intervention) or its ``mid_block`` output is shifted (steering)."""

    def __init__(self, step: int, embedding_dim: int):
        super().__init__()
        self.step, self.row_norm = step, math.sqrt(embedding_dim)
        self.mid_block = nn.Identity()  # the steered layer: a forward hook shifts its output
        self.anchor = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(sample_size=16, in_channels=3)
        self.alphas_cumprod = DDPMScheduler(num_train_timesteps=100).alphas_cumprod

    def forward(self, x, t, encoder_hidden_states=None):
        pooled = x.mean(dim=(2, 3), keepdim=True)
        steered = (self.mid_block(pooled) - pooled).flatten(1).abs().sum(1) > 0
        intervened = (encoder_hidden_states.norm(dim=-1) > 1.3 * self.row_norm).any(dim=1)
        makes = (self.step >= PLAIN_FROM) | ((intervened | steered) & (self.step >= INTERVENED_FROM))
        x0 = torch.where(makes.view(-1, 1, 1, 1), 0.5, -0.5).expand_as(x)
        t = torch.as_tensor(t).long().flatten()[0]
        alpha_bar = self.alphas_cumprod[t]
        return SimpleNamespace(sample=(x - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt())


class PlantedReader(nn.Module):
    """Reads the held-out values (blue, small) where the image is bright, other values where not."""

    concepts = dict(CONCEPTS)
    image_size = 16

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        bright = images.mean(dim=(1, 2, 3)) > 0
        logits = {}
        for concept, values in CONCEPTS.items():
            held = {"object_colour": values.index("blue") if "blue" in values else 0, "size": 0}.get(concept, 0)
            chosen = torch.where(bright, held, (held + 1) % len(values)) if concept in ("object_colour", "size") else torch.zeros_like(bright, dtype=torch.long)
            logits[concept] = nn.functional.one_hot(chosen, len(values)).float() * 10
        return logits

    def read(self, images, batch_size: int = 512):
        return torch.stack([v.argmax(-1) for v in self(images).values()], dim=1)


def test_a_planted_hidden_window_comes_out_at_its_known_steps():
    enc = encoder()
    prompts = heldout_prompts(("small", "blue"), 8)
    settings = StudySettings(
        num_images=8, sampling_steps=5, lock_in_images=4, switch_times=(10, 50), layers=("mid_block",), timesteps=(10, 50), trained_images=30,
        heldout_images=6, interventions=InterventionSettings(steer_alpha=8.0, steer_layer="mid_block", steer_t=50),
    )  # fmt: skip

    def model(step: int) -> DiffusionModel:
        return DiffusionModel(PlantedUNet(step, 16), DDPMScheduler(num_train_timesteps=100), enc, guidance_scale=3.0, step=step)

    design = ShapesDesign((("small", "blue"),))
    base = baselines(model(0), design, prompts, settings)
    records = [measure_checkpoint(model(step), PlantedReader(), prompts, base, settings, batch_size=4) for step in (0, 100, 200, 300, 400)]
    run = summarise_run("planted", {"colour_contrast": 1.0, "size_difference": 1.0}, records)
    assert run["reaches_80"] == {"plain": PLAIN_FROM, "over_prompting": INTERVENED_FROM, "embedding_intervention": INTERVENED_FROM, "steering": INTERVENED_FROM}
    assert run["hidden_window"] == {"opens": INTERVENED_FROM, "closes": PLAIN_FROM, "first_intervention": "embedding_intervention", "hidden": True}
    by_step = {s["step"]: s for s in run["steps"]}
    assert by_step[200]["plain"] == 0.0 and by_step[200]["over_prompting"] == 1.0 and by_step[300]["plain"] == 1.0
    assert run["learning_speed"]["plain"]["combination"]["speed"] == pytest.approx(1 / PLAIN_FROM)
