"""DiffusionModule: it learns, logs per timestep, keeps EMA apart, resumes, and stops on NaN."""

import hashlib

import pytest
import torch
from lightning.pytorch import Callback

from conftest import make_module, make_trainer, read_events, shapes_data
from diffprobe.callbacks import SampleGrid
from diffprobe.checkpoint import find_checkpoints, load_module


def test_fit_logs_loss_per_timestep_bucket_lr_and_sample_grids(tmp_path, tiny_data):
    module = make_module()
    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[SampleGrid(every_n_steps=2, num_images=4, num_inference_steps=3, weights="both")])
    trainer.fit(module, datamodule=tiny_data)
    events = read_events(trainer.log_dir)
    scalars = set(events.Tags()["scalars"])
    assert "train/loss" in scalars and "train/lr" in scalars and "train/ema_decay" in scalars
    buckets = {tag for tag in scalars if tag.startswith("train/loss_by_t/")}
    assert buckets and buckets <= {f"train/loss_by_t/{b}" for b in ("t0000-0024", "t0025-0049", "t0050-0074", "t0075-0099")}
    images = events.Tags()["images"]
    assert "samples/ema" in images and "samples/raw" in images
    assert [e.step for e in events.Images("samples/ema")] == [0, 2, 4]
    assert [int(p.stem.split("=")[1]) for p in find_checkpoints(trainer.log_dir) if "=" in p.stem] == [2, 4]


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    module = make_module(learning_rate=3e-3)
    batch = next(iter(shapes_data(batch_size=16, train_size=16).train_dataloader()))
    optimizer = torch.optim.Adam(module.unet.parameters(), lr=3e-3)
    generator_state = torch.get_rng_state()

    def loss_at_fixed_noise():
        torch.set_rng_state(generator_state)  # same noise and timesteps every time
        with torch.no_grad():
            return module.training_step(batch, 0).item()

    module.log = lambda *a, **k: None
    first = loss_at_fixed_noise()
    for _ in range(40):
        optimizer.zero_grad()
        module.training_step(batch, 0).backward()
        optimizer.step()
    assert loss_at_fixed_noise() < 0.6 * first


def test_ema_differs_from_raw_and_training_continues_from_raw(tmp_path, tiny_data):
    module = make_module(ema_decay=0.99)
    seen = []

    class RecordRawWeights(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(next(pl_module.unet.parameters()).detach().clone())

    trainer = make_trainer(tmp_path, max_steps=3, callbacks=[RecordRawWeights(), SampleGrid(every_n_steps=1, num_images=2, num_inference_steps=2)])
    trainer.fit(module, datamodule=tiny_data)
    raw = next(module.unet.parameters()).detach()
    ema = module.ema.shadow_params[0]
    assert not torch.allclose(raw, ema), "EMA weights must differ from the raw ones"
    # Sampling swapped EMA weights in after every step; each step must still start from the raw
    # weights the optimizer left, never from the EMA copy.
    for before, after in zip(seen[1:], seen[2:]):
        assert not torch.equal(before, after)
    with module.ema_weights():
        assert torch.equal(next(module.unet.parameters()), ema)
    assert torch.equal(next(module.unet.parameters()), raw)


def test_resume_continues_step_count_ema_and_optimizer(tmp_path, tiny_data):
    first = make_trainer(tmp_path, max_steps=4)
    first.fit(make_module(), datamodule=tiny_data)
    ckpt = tmp_path / "runs/test/version_0/checkpoints/step=000004.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["global_step"] == 4 and saved["ema"]["optimization_step"] == 4

    module = make_module()
    second = make_trainer(tmp_path, max_steps=6, version=0)
    second.fit(module, datamodule=tiny_data, ckpt_path=ckpt)
    assert second.global_step == 6
    assert module.ema.optimization_step == 6
    assert second.optimizers[0].state[next(iter(second.optimizers[0].state))]["step"].item() == 6
    steps = [e.step for e in read_events(second.log_dir).Scalars("train/loss")]
    assert steps[-1] >= 5, "the resumed run logs into the same run directory, continuing its step axis"


def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoints(tmp_path, tiny_data):
    class PoisonAtStep3(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    next(pl_module.unet.parameters()).fill_(float("nan"))

    trainer = make_trainer(tmp_path, max_steps=6, callbacks=[PoisonAtStep3()])
    module = make_module()
    with pytest.raises(FloatingPointError, match="global step 3"):
        trainer.fit(module, datamodule=tiny_data)
    ckpts = find_checkpoints(trainer.log_dir)
    assert [p.name for p in ckpts if "=" in p.name] == ["step=000002.ckpt"]
    digest = hashlib.sha256(ckpts[0].read_bytes()).hexdigest()
    reloaded = load_module(ckpts[0])
    assert all(torch.isfinite(p).all() for p in reloaded.unet.parameters())
    assert hashlib.sha256(ckpts[0].read_bytes()).hexdigest() == digest


def test_conditional_model_trains_and_samples_with_guidance(tmp_path, tiny_data):
    module = make_module(conditional=True, data=tiny_data, condition_dropout=0.2)
    initial_embedding = module.caption_encoder.token_embedding.weight.detach().clone()
    trainer = make_trainer(tmp_path, max_steps=3, callbacks=[SampleGrid(every_n_steps=3, num_images=3, num_inference_steps=2)])
    trainer.fit(module, datamodule=tiny_data)
    assert not torch.equal(module.caption_encoder.token_embedding.weight, initial_embedding), "captions are learned"
    captions = [tiny_data.heldout_dataset().caption(i) for i in range(2)]
    guided = module.sample(seed=1, captions=captions, num_inference_steps=3, guidance_scale=4.0)
    unguided = module.sample(seed=1, captions=captions, num_inference_steps=3, guidance_scale=1.0)
    assert guided.shape == (2, 3, 16, 16) and torch.isfinite(guided).all()
    assert not torch.allclose(guided, unguided), "the guidance scale must change the samples"
    assert "samples/captions/text_summary" in read_events(trainer.log_dir).Tags()["tensors"]


def test_condition_dropout_replaces_captions_with_the_empty_one():
    module = make_module(conditional=True)
    captions = ["a small red solid circle at the top left on a black background"] * 64
    torch.manual_seed(0)
    dropped = module.encode_captions(captions, drop_probability=0.5)
    empty = module.caption_encoder.unconditional(1)[0]
    is_empty = torch.tensor([torch.allclose(row, empty) for row in dropped])
    assert 10 < is_empty.sum() < 54
