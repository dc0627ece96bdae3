"""DF-RISE, DF-CAM, insertion/deletion AUC and token relevance on planted and tiny models."""

from __future__ import annotations

import pytest
import torch

from diffprobe.capture.attention import record_attention
from diffprobe.capture.gradients import block_layers, capture_outputs
from diffprobe.explain.auc import better_auc, causal_curve, normalised_auc, random_saliency
from diffprobe.explain.cam import df_cam
from diffprobe.explain.model import Prompt, from_parts
from diffprobe.explain.relevance import relevance_over_run, token_relevance
from diffprobe.explain.rise import df_rise, random_masks
from diffprobe.explain.run import explain_step, normalise_map, predict_prev
from diffprobe.explain.similarity import similarity_map
from helpers import make_module
from planted import SCHEDULER_CONFIG, PlantedBlockUNet, PlantedStepUNet, planted_region

REGION = planted_region()
CAPTION = "a large red solid circle at the top left on a navy background"


@pytest.fixture(scope="module")
def planted_step():
    model = from_parts(PlantedStepUNet(), SCHEDULER_CONFIG)
    return model, explain_step(model, seed=0, num_inference_steps=20, step=15)


@pytest.fixture(scope="module")
def conditional():
    torch.manual_seed(0)
    module = make_module(conditional=True).eval()
    model = from_parts(module.unet, module.scheduler.config, module.caption_encoder, guidance_scale=3.0)
    prompt = model.prompt(CAPTION)
    return model, prompt, explain_step(model, prompt=prompt, num_inference_steps=6, step=3)


def _state(unet):
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in unet.modules())
    processors = {name: id(m.processor) for name, m in unet.named_modules() if hasattr(m, "processor")}
    return hooks, processors, unet.training, [p.requires_grad for p in unet.parameters()], torch.is_grad_enabled()


def test_explained_step_is_a_deterministic_ddim_step(planted_step):
    model, step = planted_step
    assert step.timesteps[step.index] == step.t == 200
    assert torch.equal(predict_prev(model, step, step.x_t), step.x_prev)
    assert torch.allclose(step.x_prev, model.unet.planted_prev(step.x_t), atol=1e-5)
    again = explain_step(model, seed=0, num_inference_steps=20, step=15)
    assert torch.equal(again.x_t, step.x_t) and torch.equal(again.final, step.final)


def test_step_outside_the_run_and_prompt_errors(planted_step):
    model, _ = planted_step
    with pytest.raises(ValueError, match="step 20 is outside the run.*0..19"):
        explain_step(model, num_inference_steps=20, step=20)
    with pytest.raises(ValueError, match="takes no prompt"):
        model.prompt("a red circle")


def test_similarity_maps_are_one_for_identical_inputs_and_lower_for_noise():
    target = torch.randn(1, 3, 16, 16)
    for kind in ("structure", "contrast", "luminance", "ssim", "cosine"):
        same = similarity_map(target, target, kind)
        assert same.shape == (1, 16, 16)
        expected = 2.0 if kind == "structure" else 1.0  # the paper's structure term carries a factor 2
        assert torch.allclose(same, torch.full_like(same, expected), atol=0.02), kind
    noisy = similarity_map(target + 2 * torch.randn(4, 3, 16, 16), target, "ssim")
    assert noisy.mean() < 0.6


@pytest.mark.parametrize("window, sigma", [(11, 1.5), (15, 2.0)])  # torchmetrics sizes its window from sigma
def test_ssim_terms_match_torchmetrics_on_the_same_windows(window, sigma):
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    y = (0.6 * x + 0.4 * torch.randn(2, 3, 32, 32, generator=generator)).clamp(-1, 1)
    inner = slice(window // 2, -(window // 2))  # padding differs at the border (replicate vs reflect)

    def reference(x, y, data_range):  # (B, h, w) torchmetrics' SSIM map, averaged over channels
        _, full = tm_ssim(x, y, gaussian_kernel=True, sigma=sigma, data_range=data_range, reduction="none", return_full_image=True)
        return full.mean(1)[:, inner, inner]

    ours = similarity_map(x, y, "ssim", window=window, sigma=sigma, data_range=2.0)[:, inner, inner]
    assert torch.allclose(ours, reference(x, y, 2.0), atol=1e-5)
    # Structure: SSIM is luminance x contrast x Wang's structure (cov + C3) / (s_x s_y + C3). With a
    # data range so small that the constants vanish, the paper's structure term is twice Wang's, so
    # the three maps of one channel must multiply to twice the reference's SSIM map.
    terms = [
        similarity_map(x[:, :1], y[:, :1], kind, window=window, sigma=sigma, data_range=1e-4)
        for kind in ("luminance", "contrast", "structure")
    ]
    product = (terms[0] * terms[1] * terms[2])[:, inner, inner]
    assert torch.allclose(product, 2 * reference(x[:, :1], y[:, :1], 1e-4), atol=1e-4)


def test_masks_keep_the_asked_fraction_and_grid_masks_are_smooth():
    generator = torch.Generator().manual_seed(0)
    masks = random_masks(200, (16, 16), 0.3, generator)
    assert masks.shape == (200, 1, 16, 16) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert abs(masks.mean().item() - 0.3) < 0.02
    grid = random_masks(50, (16, 16), 0.5, generator, grid=4)
    assert grid.shape == (50, 1, 16, 16) and 0 < grid.mean() < 1
    assert len(grid.unique()) > 2  # bilinear upsampling: soft masks


@pytest.mark.parametrize("grid", [None, 4])
def test_rise_concentrates_in_the_planted_region(planted_step, grid):
    model, step = planted_step
    before = _state(model.unet)
    saliency = normalise_map(df_rise(model, step, num_masks=300, grid=grid, batch_size=64).saliency)
    assert saliency.shape == (16, 16) and torch.isfinite(saliency).all()
    assert saliency[REGION].mean() > saliency[~REGION].mean() + 0.08
    assert _state(model.unet) == before


def test_rise_is_batched_without_changing_the_result(planted_step):
    model, step = planted_step
    one = df_rise(model, step, num_masks=20, batch_size=1, seed=3).saliency
    many = df_rise(model, step, num_masks=20, batch_size=20, seed=3).saliency
    assert torch.allclose(one, many, atol=1e-4)
    with pytest.raises(ValueError, match="unknown similarity"):
        df_rise(model, step, similarity="psnr")


def test_cam_lights_up_the_planted_block_region():
    model = from_parts(PlantedBlockUNet(), SCHEDULER_CONFIG)
    step = explain_step(model, seed=0, num_inference_steps=20, step=15)
    before = _state(model.unet)
    result = df_cam(model, step)
    assert list(result.layer_maps) == ["down_blocks.0.resnets.0"]
    assert result.total[REGION].min() > 0.5 and result.total[~REGION].max() == 0
    assert _state(model.unet) == before
    assert all(p.grad is None for p in model.unet.parameters())


def test_cam_every_block_of_a_conditional_unet_with_cfg(conditional):
    model, _, step = conditional
    before = _state(model.unet)
    result = df_cam(model, step)
    assert list(result.layer_maps) == block_layers(model.unet)
    kinds = {name.split(".")[-2] for name in result.layer_maps}
    assert kinds == {"resnets", "attentions", "downsamplers", "upsamplers"} and len(result.layer_maps) == 14
    assert all(m.shape == (16, 16) and torch.isfinite(m).all() and m.max() <= 1 for m in result.layer_maps.values())
    assert any(m.max() > 0 for m in result.layer_maps.values())
    assert _state(model.unet) == before
    with pytest.raises(ValueError, match=r"no module\(s\) \['down_blocks.9'\]; choose from \['down_blocks.0.resnets.0'"):
        df_cam(model, step, layers=["down_blocks.9"])


def test_block_layers_run_in_forward_order(conditional):
    model, prompt, step = conditional
    names = block_layers(model.unet)
    seen = []
    with capture_outputs(model.unet, names) as outputs:
        hooks = [dict(model.unet.named_modules())[n].register_forward_hook(lambda m, a, o, n=n: seen.append(n)) for n in names]
        model.guided(step.x_t, step.t, prompt)
        for hook in hooks:
            hook.remove()
    assert seen[: len(names)] == names and set(outputs) == set(names)


def test_perfect_saliency_beats_random_on_the_planted_case(planted_step):
    model, step = planted_step
    perfect = REGION.float() + 0.01 * torch.rand(16, 16)
    random = torch.stack([causal_curve(model, step, random_saliency((16, 16), seed), mode="insertion") for seed in range(3)])
    insertion_perfect = normalised_auc(causal_curve(model, step, perfect, mode="insertion")[None]).auc
    assert better_auc("insertion", "mse") == "lower"
    assert insertion_perfect < normalised_auc(random).auc - 0.2
    deletion = causal_curve(model, step, perfect, mode="deletion", score="ssim")
    deletion_random = causal_curve(model, step, random_saliency((16, 16), 0), mode="deletion", score="ssim")
    assert better_auc("deletion", "ssim") == "lower"
    assert normalised_auc(deletion[None]).auc < normalised_auc(deletion_random[None]).auc


def test_causal_curve_ends_at_the_target_and_rejects_a_wrong_map(planted_step):
    model, step = planted_step
    curve = causal_curve(model, step, random_saliency((16, 16), 0), mode="insertion", stride=64)
    assert curve.shape == (5,)  # 0, 64, 128, 192, 256 positions inserted
    assert curve[-1] < 1e-10 < curve[0]  # all of x_t back in: exactly the true x_{t-1}
    summary = normalised_auc(torch.stack([curve, curve]))
    assert summary.curve[0] == 1 and summary.curve[-1] == 0 and 0 < summary.auc < 1
    with pytest.raises(ValueError, match="resize the map"):
        causal_curve(model, step, torch.rand(8, 8))


def test_differentiable_attention_records_graph_probabilities(conditional):
    model, prompt, step = conditional
    plain = model.guided(step.x_t, step.t, prompt)
    with torch.enable_grad(), record_attention(model.unet, differentiable=True) as records:
        traced_out = model.guided(step.x_t.clone().requires_grad_(True), step.t, prompt)
        traced = records["down_blocks.1.attentions.0.transformer_blocks.0.attn2"][-1]
        (grad,) = torch.autograd.grad(traced_out.sum(), traced.probs)
    assert torch.allclose(traced_out, plain, atol=1e-5)
    assert traced.split().shape == (2, traced.heads, 64, 16)  # CFG batch, heads, 8x8 queries, 16 tokens
    assert torch.allclose(traced.split().sum(-1), torch.ones(()), atol=1e-5)
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differentiable recording"):
        with record_attention(model.unet, differentiable=True, keep_heads=True):
            pass


def test_relevance_goes_to_the_only_token_that_carries_information(conditional):
    model, prompt, step = conditional
    condition = torch.zeros_like(prompt.condition)
    condition[0, 4] = 3 * torch.randn(condition.shape[-1])  # only "circle" has a non-zero value vector
    planted = Prompt(
        text=prompt.text, condition=condition, uncondition=torch.zeros_like(condition), tokens=prompt.tokens, words=prompt.words
    )
    before = _state(model.unet)
    result = token_relevance(model, step.x_t, step.t, planted)
    assert result.words[4] == "circle"
    assert result.scores[4] == 1 and result.scores.sum() == 1
    assert _state(model.unet) == before


def test_relevance_per_step_over_a_schedule(conditional):
    model, prompt, _ = conditional
    run = relevance_over_run(model, prompt, seed=0, timesteps=[80, 40, 10, 0])
    assert run.timesteps == [80, 40, 10, 0]
    assert run.scores.shape == (4, len(prompt.words)) == (4, 13)
    assert torch.isfinite(run.scores).all() and (run.scores.amax(1) == 1).all() and (run.scores.amin(1) == 0).all()
    assert torch.allclose(run.totals(), run.scores.sum(0))


def test_relevance_needs_a_conditional_model(planted_step):
    model, step = planted_step
    with pytest.raises(ValueError, match="needs a conditional model"):
        token_relevance(model, step.x_t, step.t, None)


def test_cam_combines_cfg_halves_as_unconditional_plus_w_times_difference(conditional):
    model, prompt, step = conditional
    layer = "mid_block.resnets.0"
    with torch.enable_grad(), capture_outputs(model.unet, [layer]) as outputs:
        eps = model.guided(step.x_t.clone().requires_grad_(True), step.t, prompt)
        (grad,) = torch.autograd.grad(eps.sum(), outputs[layer])
    both, w = outputs[layer].detach(), model.guidance_scale
    activation = both[:1] + w * (both[1:] - both[:1])  # uncond first, cond second
    gradient = grad[:1] + w * (grad[1:] - grad[:1])
    expected = (gradient.mean((2, 3), keepdim=True) * activation).sum(1)[0].clamp_min(0)
    expected = normalise_map(torch.nn.functional.interpolate(expected[None, None], size=(16, 16), mode="bilinear")[0, 0])
    assert torch.allclose(df_cam(model, step, layers=[layer]).layer_maps[layer], expected, atol=1e-5)


def test_chefer_rules_on_hand_worked_matrices():
    from diffprobe.explain.relevance import chain_relevance, text_relevance

    # Normalisation (eq. 8-9: rows of R - I scaled to sum to 1, then + I), read through the public rule:
    # a self-attention A gives R_ii = I + A, and a cross-attention I after it gives R_iq = norm(R_ii)^T.
    r_ii = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    normalised = chain_relevance([(False, r_ii - torch.eye(2)), (True, torch.eye(2))], torch.eye(2)).T
    assert torch.allclose(normalised, torch.tensor([[1.5, 0.5], [0.0, 2.0]]))
    self_attention = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    cross = torch.eye(2)
    # R_ii = I + A = [[1.5, .5], [0, 2]] (already normalised); R_iq = R_ii^T A_cross R_qq = [[1.5, 0], [.5, 2]]
    r_iq = chain_relevance([(False, self_attention), (True, cross)], torch.eye(2))
    assert torch.allclose(r_iq, torch.tensor([[1.5, 0.0], [0.5, 2.0]]))
    # a later self-attention moves relevance between positions: R_iq += A R_iq
    after = chain_relevance([(False, self_attention), (True, cross), (False, torch.tensor([[0.0, 1.0], [0.0, 0.0]]))], torch.eye(2))
    assert torch.allclose(after, torch.tensor([[2.0, 2.0], [0.5, 2.0]]))
    probs = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    assert torch.allclose(text_relevance([probs], [torch.ones_like(probs)]), torch.tensor([[2.0, 0.0], [0.5, 1.5]]))
    with pytest.raises(RuntimeError, match="no gradient reached the text encoder"):
        text_relevance([probs], [None])


def test_every_map_on_the_conditional_model_keeps_it_unchanged(conditional):
    from diffprobe.explain.lime import lime_saliency

    model, prompt, step = conditional
    before = _state(model.unet)
    maps = {
        "rise": df_rise(model, step, num_masks=16, batch_size=8).saliency,
        "cam": df_cam(model, step).total,
        "lime": lime_saliency(model, step, num_samples=24, batch_size=8).saliency,
    }
    for name, saliency in maps.items():
        assert saliency.shape == (16, 16) and torch.isfinite(saliency).all(), name
        curve = causal_curve(model, step, saliency, mode="deletion", stride=64)
        assert curve.shape == (5,) and curve[0] < 1e-10 < curve[-1], name  # nothing deleted: exactly the true x_{t-1}
    token_relevance(model, step.x_t, step.t, prompt)
    assert _state(model.unet) == before
