"""Stable Diffusion as an ExplainModel, on a tiny random pipeline written from configs (no download)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

pytest.importorskip("transformers")

from diffprobe.explain.rise import df_rise  # noqa: E402
from diffprobe.explain.run import explain_step, predict_prev  # noqa: E402
from diffprobe.explain.stable_diffusion import is_stable_diffusion_folder, load_stable_diffusion  # noqa: E402
from tiny_sd import WORDS, write_tiny_stable_diffusion  # noqa: E402

LATENT = 8


@pytest.fixture(scope="module")
def sd_folder(tiny_sd):
    """The session's tiny Stable Diffusion folder (conftest.py), written with LATENT-sized latents."""
    assert json.loads((tiny_sd / "unet" / "config.json").read_text())["sample_size"] == LATENT
    return tiny_sd


@pytest.fixture(scope="module")
def sd(sd_folder):
    return load_stable_diffusion(sd_folder, guidance_scale=7.5)


def processor_types(unet) -> dict[str, type]:
    return {name: type(processor) for name, processor in unet.attn_processors.items()}


def test_loads_frozen_model_with_sd_schedule(sd, sd_folder):
    assert sd.kind == "stable-diffusion" and sd.conditional and sd.guidance_scale == 7.5
    assert is_stable_diffusion_folder(sd_folder)
    assert not any(p.requires_grad for p in sd.unet.parameters())
    for name in ("text_encoder", "vae"):
        assert not any(p.requires_grad for p in sd.extras[name].parameters()), name
        assert not sd.extras[name].training, name
    assert sd.extras["text_encoder"].config._attn_implementation == "eager"
    ddim = sd.ddim()
    assert ddim.config.beta_schedule == "scaled_linear" and ddim.config.steps_offset == 1
    assert ddim.config.set_alpha_to_one is False
    # The tiny folder's PNDM config, like SD v1.4's, has no clip_sample: DDIM must not clip latents.
    assert "clip_sample" not in json.loads((sd_folder / "scheduler" / "scheduler_config.json").read_text())
    assert ddim.config.clip_sample is False


def test_prompt_tokens_words_and_conditions(sd):
    prompt = sd.prompt("a red cat on the mat")
    length = sd.extras["tokenizer"].model_max_length
    assert len(prompt.tokens) == length
    assert prompt.tokens[0] == "<|startoftext|>" and prompt.tokens[7] == "<|endoftext|>"
    assert prompt.words == [1, 2, 3, 4, 5, 6]
    assert prompt.word_tokens == ["a</w>", "red</w>", "cat</w>", "on</w>", "the</w>", "mat</w>"]
    assert prompt.condition.shape == prompt.uncondition.shape == (1, length, 32)
    assert torch.isfinite(prompt.condition).all()
    assert not torch.allclose(prompt.condition, prompt.uncondition)
    # The uncondition is the empty prompt's encoding (SD's null prompt), whatever the prompt.
    tokenizer, text_encoder = sd.extras["tokenizer"], sd.extras["text_encoder"]
    with torch.no_grad():
        empty = text_encoder(tokenizer("", padding="max_length", max_length=length, return_tensors="pt").input_ids)[0]
    torch.testing.assert_close(prompt.uncondition, empty)
    torch.testing.assert_close(sd.prompt("blue dog").uncondition, empty)
    assert sd.prompt("blue dog").words == [1, 2]


def test_too_long_prompt_is_an_error(sd):
    with pytest.raises(ValueError, match="shorten the prompt"):
        sd.prompt(" ".join(WORDS * 3))


def test_decode_gives_images_twice_the_latent_size(sd):
    latents = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(0))
    images = sd.decode(latents)
    assert images.shape == (1, 3, 2 * LATENT, 2 * LATENT)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    # SD's latents are scaled by the VAE's scaling_factor (0.18215): decode divides it out.
    vae = sd.extras["vae"]
    assert vae.config.scaling_factor != 1
    with torch.no_grad():
        expected = vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)
    torch.testing.assert_close(images, expected)


def test_trace_text_gives_attention_per_layer_with_gradients(sd):
    prompt = sd.prompt("a red cat")
    traced = sd.trace_text_fn("a red cat")
    text_encoder = sd.extras["text_encoder"]
    length = prompt.condition.shape[1]
    assert len(traced.attentions) == text_encoder.config.num_hidden_layers == 2
    for attention in traced.attentions:
        assert attention.shape == (1, 4, length, length)
        assert torch.allclose(attention.sum(-1), torch.ones(1, 4, length), atol=1e-5)  # probabilities
    assert traced.condition.requires_grad
    torch.testing.assert_close(traced.condition.detach(), prompt.condition)
    traced.condition.sum().backward()
    for attention in traced.attentions:
        assert attention.grad is not None and attention.grad.shape == attention.shape
        assert attention.grad.abs().sum() > 0
    # The gradient goes to the attention maps, never into the frozen weights.
    assert all(p.grad is None for p in text_encoder.parameters())


def test_traced_condition_carries_unet_gradients_to_text_attention(sd):
    step = explain_step(sd, prompt=sd.prompt("a red cat"), num_inference_steps=4, step=2)
    traced = sd.trace_text_fn("a red cat")
    with torch.enable_grad():
        eps = sd.guided(step.x_t, step.t, step.prompt, condition=traced.condition)
        eps.sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in traced.attentions)
    assert all(p.grad is None for p in sd.unet.parameters())


def test_explain_step_predict_prev_and_rise(sd):
    processors = processor_types(sd.unet)
    step = explain_step(sd, prompt=sd.prompt("a red cat"), num_inference_steps=4, step=2)
    assert step.timesteps == [751, 501, 251, 1]  # SD's "leading" spacing with steps_offset 1
    assert step.t == 251
    for tensor in (step.x_t, step.x_prev, step.x0_hat, step.final):
        assert tensor.shape == (1, 4, LATENT, LATENT)
        assert torch.isfinite(tensor).all()
    assert not torch.allclose(step.x_t, step.x_prev)
    # DDIM (eta = 0) is deterministic: re-running the step on its own input gives its own output.
    torch.testing.assert_close(predict_prev(sd, step, step.x_t), step.x_prev, rtol=1e-4, atol=1e-5)
    # ... and the guided prediction depends on the prompt.
    other = explain_step(sd, prompt=sd.prompt("blue dog"), num_inference_steps=4, step=2)
    assert not torch.allclose(other.x_prev, step.x_prev)

    result = df_rise(sd, step, num_masks=8, batch_size=4)
    assert result.saliency.shape == (LATENT, LATENT)
    assert torch.isfinite(result.saliency).all() and result.saliency.abs().sum() > 0

    assert processor_types(sd.unet) == processors
    assert not any(p.requires_grad for p in sd.unet.parameters())


def test_tiny_sd_is_seeded(sd_folder, tmp_path):
    again = write_tiny_stable_diffusion(tmp_path / "again", latent_size=LATENT)
    other = write_tiny_stable_diffusion(tmp_path / "other", latent_size=LATENT, seed=1)
    for weights in (
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ):
        assert (again / weights).read_bytes() == (sd_folder / weights).read_bytes(), weights
        assert (other / weights).read_bytes() != (sd_folder / weights).read_bytes(), weights


def test_missing_folder_says_what_to_download(tmp_path):
    missing = tmp_path / "sd-v1-4"
    with pytest.raises(FileNotFoundError, match=r"does not exist.*hf download CompVis/stable-diffusion-v1-4.*--ckpt .*sd-v1-4"):
        load_stable_diffusion(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \(readable\) model_index.json.*hf download CompVis/stable-diffusion-v1-4"):
        load_stable_diffusion(tmp_path / "empty")
    assert not is_stable_diffusion_folder(missing) and not is_stable_diffusion_folder(tmp_path / "empty")


def test_missing_weights_name_the_component(sd_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(FileNotFoundError, match=r"unet/ is missing.*incomplete"):
        load_stable_diffusion(broken)
    shutil.copytree(sd_folder / "unet", broken / "unet")
    (broken / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"text_encoder/ is missing or has no weights"):
        load_stable_diffusion(broken)


def test_other_pipelines_are_not_stable_diffusion(sd_folder, tmp_path):
    other = tmp_path / "ddpm"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}))
    assert not is_stable_diffusion_folder(other)
    xl = tmp_path / "xl"
    shutil.copytree(sd_folder, xl)
    index = json.loads((xl / "model_index.json").read_text())
    (xl / "model_index.json").write_text(
        json.dumps({**index, "_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]})
    )
    assert is_stable_diffusion_folder(xl)
    with pytest.raises(ValueError, match="SDXL"):
        load_stable_diffusion(xl)


def test_without_transformers_says_what_to_install(sd_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match=r"pip install 'diffprobe\[sd\]'"):
        load_stable_diffusion(sd_folder)


def test_text_encoder_layers_change_token_relevance(sd):
    import dataclasses

    from diffprobe.explain.relevance import token_relevance

    prompt = sd.prompt("a red cat")
    step = explain_step(sd, prompt=prompt, num_inference_steps=4, step=2)
    with_text = token_relevance(sd, step.x_t, step.t, prompt)
    identity_text = token_relevance(dataclasses.replace(sd, trace_text_fn=None), step.x_t, step.t, prompt)
    assert with_text.words == ["a</w>", "red</w>", "cat</w>"]
    assert not torch.allclose(with_text.raw, identity_text.raw), "the CLIP layers' R_qq must enter the cross-attention rule"


def test_bfloat16_weights_run_every_map(sd_folder):
    from diffprobe.explain.cam import df_cam
    from diffprobe.explain.relevance import token_relevance

    model = load_stable_diffusion(sd_folder, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    prompt = model.prompt("a red cat")
    step = explain_step(model, prompt=prompt, num_inference_steps=4, step=2)
    assert step.x_t.dtype == torch.bfloat16
    assert torch.isfinite(df_rise(model, step, num_masks=8, batch_size=8).saliency).all()
    assert torch.isfinite(df_cam(model, step).total).all()
    assert torch.isfinite(token_relevance(model, step.x_t, step.t, prompt).scores).all()
