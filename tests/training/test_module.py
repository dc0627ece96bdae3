"""DiffusionModule: it learns, logs per timestep, keeps EMA apart, resumes, and stops on NaN."""

import pytest
import torch
from lightning.pytorch import Callback

from diffprobe.io.runs import find_checkpoints
from diffprobe.training.callbacks import SampleGrid
from diffprobe.training.checkpoints import load_module
from helpers import make_module, make_trainer, read_events, shapes_data


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
    # the step-0 weights (the init baseline of every probe), then every 2 steps
    assert [int(p.stem.split("=")[1]) for p in find_checkpoints(trainer.log_dir) if "=" in p.stem] == [0, 2, 4]


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
    left_by_optimizer, started_from = [], []

    class RecordBeforeSampling(Callback):  # runs before SampleGrid swaps EMA weights in and out
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            left_by_optimizer.append([p.detach().clone() for p in pl_module.unet.parameters()])

    class RecordAtStart(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            started_from.append([p.detach().clone() for p in pl_module.unet.parameters()])

    callbacks = [RecordAtStart(), RecordBeforeSampling(), SampleGrid(every_n_steps=1, num_images=2, num_inference_steps=2)]
    trainer = make_trainer(tmp_path, max_steps=3, callbacks=callbacks)
    trainer.fit(module, datamodule=tiny_data)
    raw = next(module.unet.parameters()).detach()
    ema = module.ema.shadow_params[0]
    assert not torch.allclose(raw, ema), "EMA weights must differ from the raw ones"
    # Every step starts from exactly the raw weights the previous optimizer step left, although
    # SampleGrid sampled with the EMA weights in between.
    for left, started in zip(left_by_optimizer, started_from[1:]):
        assert all(torch.equal(a, b) for a, b in zip(left, started))
    with module.ema_weights():
        assert torch.equal(next(module.unet.parameters()), ema)
    assert torch.equal(next(module.unet.parameters()), raw)
    assert module.ema.optimization_step == 3, "one EMA update per optimizer step"


def test_resume_continues_step_count_ema_and_optimizer(tmp_path, tiny_data):
    first = make_trainer(tmp_path, max_steps=4)
    first.fit(make_module(), datamodule=tiny_data)
    ckpt = tmp_path / "runs/test/version_0/checkpoints/step=000004.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 4 and saved["ema"]["optimization_step"] == 4
    at_start = {}

    class RecordAtResume(Callback):
        def on_train_start(self, trainer, pl_module):
            at_start["unet"] = {k: v.detach().clone() for k, v in pl_module.unet.state_dict().items()}
            at_start["ema"] = [p.clone() for p in pl_module.ema.shadow_params]

    module = make_module(ema_decay=0.95)
    second = make_trainer(tmp_path, max_steps=6, version=0, callbacks=[RecordAtResume()])
    second.fit(module, datamodule=tiny_data, ckpt_path=ckpt)
    assert all(torch.equal(at_start["unet"][k], saved["state_dict"][f"unet.{k}"]) for k in at_start["unet"])
    saved_ema = [v for k, v in saved["state_dict"].items() if k.startswith("ema.copy.")]
    assert len(saved_ema) == len(at_start["ema"]) and all(torch.equal(a, b) for a, b in zip(at_start["ema"], saved_ema))
    assert second.global_step == 6
    assert module.ema.optimization_step == 6
    assert module.ema.decay == 0.95, "EMA settings come from this run, the averages from the checkpoint"
    assert second.optimizers[0].state[next(iter(second.optimizers[0].state))]["step"].item() == 6
    steps = [e.step for e in read_events(second.log_dir).Scalars("train/loss")]
    assert steps[-1] >= 5, "the resumed run logs into the same run directory, continuing its step axis"


def test_a_run_begun_with_the_gpus_fused_adamw_resumes_with_the_default_one_on_a_cpu(tmp_path, tiny_data):
    make_trainer(tmp_path, max_steps=2).fit(make_module(), datamodule=tiny_data)
    ckpt = tmp_path / "runs/test/version_0/checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert all(group["fused"] is None for group in saved["optimizer_states"][0]["param_groups"])  # built on a CPU
    for group in saved["optimizer_states"][0]["param_groups"]:
        group["fused"] = True  # as a GPU run writes it
    torch.save(saved, tmp_path / "from_gpu.ckpt")
    second = make_trainer(tmp_path, max_steps=3, version=1)
    second.fit(make_module(), datamodule=tiny_data, ckpt_path=tmp_path / "from_gpu.ckpt")
    assert second.global_step == 3 and all(group["fused"] is None for group in second.optimizers[0].param_groups)


class PoisonAtStep3(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 3:
            with torch.no_grad():
                next(pl_module.unet.parameters()).fill_(float("nan"))


def _all_finite(path) -> bool:
    module = load_module(path)
    return all(torch.isfinite(p).all() for p in module.unet.parameters()) and all(torch.isfinite(p).all() for p in module.ema.shadow_params)


def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoints(tmp_path, tiny_data):
    trainer = make_trainer(tmp_path, max_steps=6, callbacks=[PoisonAtStep3()])
    with pytest.raises(FloatingPointError, match="global step 3"):
        trainer.fit(make_module(), datamodule=tiny_data)
    ckpts = find_checkpoints(trainer.log_dir)
    assert [p.name for p in ckpts if "=" in p.name] == ["step=000000.ckpt", "step=000002.ckpt"]
    assert _all_finite(ckpts[-1]) and _all_finite(ckpts[-1].parent / "last.ckpt")


def test_a_rarer_nan_check_still_never_checkpoints_bad_weights(tmp_path, tiny_data):
    # The loss is only read every 5 steps, but the checkpoint at step 4 must not save NaN weights.
    trainer = make_trainer(tmp_path, max_steps=8, callbacks=[PoisonAtStep3()])
    with pytest.raises(FloatingPointError, match="before the checkpoint at global step 4"):
        trainer.fit(make_module(check_finite_every_n_steps=5), datamodule=tiny_data)
    names = sorted(p.name for p in (tmp_path / "runs/test/version_0/checkpoints").iterdir())
    assert names == ["last.ckpt", "step=000000.ckpt", "step=000002.ckpt"]
    assert _all_finite(tmp_path / "runs/test/version_0/checkpoints/last.ckpt")


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


def test_ddpm_and_ddim_sampling_are_seeded_and_custom_timesteps_need_ddpm():
    from diffprobe.diffusion import sampling
    from diffprobe.diffusion.ddpm import sampling_scheduler

    module = make_module()
    for sampler in ("ddpm", "ddim"):
        a = module.sample(2, seed=5, num_inference_steps=4, sampler=sampler)
        b = module.sample(2, seed=5, num_inference_steps=4, sampler=sampler)
        c = module.sample(2, seed=6, num_inference_steps=4, sampler=sampler)
        assert torch.equal(a, b) and not torch.equal(a, c) and a.abs().max() <= 1
    records = list(sampling.denoise(module.unet, sampling_scheduler(module.scheduler, "ddpm"), batch_size=1, timesteps=[90, 40, 5]))
    assert [r.t for r in records] == [90, 40, 5]
    with pytest.raises(ValueError, match="cannot take custom timesteps"):
        list(sampling.denoise(module.unet, sampling_scheduler(module.scheduler, "ddim"), batch_size=1, timesteps=[90, 40, 5]))


def test_ema_averages_are_a_submodule_and_older_checkpoints_still_load(tmp_path, tiny_data):
    trainer = make_trainer(tmp_path, max_steps=2)
    module = make_module()
    trainer.fit(module, datamodule=tiny_data)
    # The averages are part of the module (moved, saved and sharded with it), frozen, not optimised.
    names = [n for n, _ in module.named_parameters() if n.startswith("ema.copy.unet.")]
    assert len(names) == len(list(module.unet.parameters()))
    assert not any(p.requires_grad for p in module.ema.parameters())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in module.ema.parameters()}
    # A checkpoint of the earlier format (averages as a list in checkpoint["ema"]) loads the same.
    path = tmp_path / "runs/test/version_0/checkpoints/last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    averages = [checkpoint["state_dict"].pop(k) for k in list(checkpoint["state_dict"]) if k.startswith("ema.copy.")]
    checkpoint["ema"]["shadow_params"] = averages
    torch.save(checkpoint, tmp_path / "old.ckpt")
    old = load_module(tmp_path / "old.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(old.ema.shadow_params, averages)) and old.ema.optimization_step == 2


def test_the_step_bar_reads_the_metrics_at_its_pace_not_every_step(tmp_path, tiny_data, monkeypatch):
    from diffprobe.training.callbacks import StepProgressBar, progress

    clock = {"now": 0.0}
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock["now"])
    bar = StepProgressBar(metrics_every_s=0.5)
    reads, inside = [], {"batch_end": False}
    read, batch_end = bar.get_metrics, bar.on_train_batch_end

    def get_metrics(trainer, module):
        if inside["batch_end"]:  # the bar's own per-step reads, not Lightning's end-of-epoch one
            reads.append(trainer.global_step)
        return read(trainer, module)

    def on_train_batch_end(*args):
        inside["batch_end"] = True
        try:
            batch_end(*args)
        finally:
            inside["batch_end"] = False

    monkeypatch.setattr(bar, "get_metrics", get_metrics)
    monkeypatch.setattr(bar, "on_train_batch_end", on_train_batch_end)

    class Tick(Callback):  # 0.2 s of the fake clock per step
        def on_train_batch_start(self, *args):
            clock["now"] += 0.2

    make_trainer(tmp_path, max_steps=8, callbacks=[Tick(), bar], enable_progress_bar=True).fit(make_module(), datamodule=tiny_data)
    # steps 1..8 at 0.2 s each: read at the first step, then whenever 0.5 s have passed, and at the
    # last step (0.2 s after the one before): the run ends showing its final loss
    assert reads == [1, 4, 7, 8]
