"""GPU-only paths (run with -m gpu on a CUDA machine): bf16-mixed, channels_last, torch.compile."""

import pytest
import torch
from diffusers import DDPMPipeline

from diffprobe.training import checkpoints
from diffprobe.training.callbacks import SampleGrid
from helpers import make_module, make_trainer, shapes_data

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("compile", [False, True])
def test_bf16_channels_last_compile_train_sample_export(tmp_path, compile):
    data = shapes_data(image_size=16, train_size=256, batch_size=32)
    module = make_module(channels_last=True, compile=compile)
    trainer = make_trainer(
        tmp_path, max_steps=6, accelerator="gpu", devices=1, precision="bf16-mixed",
        callbacks=[SampleGrid(every_n_steps=3, num_images=4, num_inference_steps=3)],
    )
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 6
    assert all(group["fused"] is True for group in trainer.optimizers[0].param_groups)  # one kernel per update
    # Lightning moves the module to the CPU at teardown; the EMA copy must follow it.
    assert module.ema.shadow_params[0].device == next(module.unet.parameters()).device
    assert all(torch.isfinite(p).all() for p in module.unet.parameters())
    module.to("cuda")
    images = module.sample(4, num_inference_steps=3)
    assert images.shape == (4, 3, 16, 16) and torch.isfinite(images).all()
    out = checkpoints.export_module(module, tmp_path / "export")
    pipeline = DDPMPipeline.from_pretrained(out).to("cuda")
    generated = pipeline(batch_size=2, num_inference_steps=3, output_type="np").images
    assert generated.shape == (2, 16, 16, 3)
    reloaded = checkpoints.load_module(tmp_path / "runs/test/version_0/checkpoints/last.ckpt")
    assert torch.equal(reloaded.unet.state_dict()["conv_in.weight"], module.unet.state_dict()["conv_in.weight"].cpu())


def test_live_probes_on_gpu_with_bf16(tmp_path):
    from diffprobe.training.callbacks import OnlineProbes, ProbeMonitor
    from helpers import read_events

    data = shapes_data(image_size=16, train_size=256, heldout_size=40, batch_size=32)
    callbacks = [OnlineProbes(layers=["mid_block"], log_every_n_steps=2), ProbeMonitor(every_n_steps=4, num_images=30, timesteps=[10, 90], layers=["mid_block"])]
    trainer = make_trainer(tmp_path, max_steps=4, accelerator="gpu", devices=1, precision="bf16-mixed", callbacks=callbacks)
    trainer.fit(make_module(), datamodule=data)
    tags = set(read_events(trainer.log_dir).Tags()["scalars"])
    assert "probe/shape/mid_block/t0010/acc" in tags and any(t.startswith("probe_online/") for t in tags)


def test_probe_monitor_runs_eager_beside_a_compiled_unet(tmp_path):
    from diffprobe.training.callbacks import ProbeMonitor

    data = shapes_data(image_size=16, train_size=256, heldout_size=40, batch_size=32)
    monitor = ProbeMonitor(every_n_steps=3, num_images=30, timesteps=[10, 90], layers=["mid_block"], method="ridge")
    trainer = make_trainer(tmp_path, max_steps=3, accelerator="gpu", devices=1, precision="bf16-mixed", callbacks=[monitor])
    trainer.fit(make_module(compile=True), datamodule=data)
    assert [h["step"] for h in monitor.history] == [0, 3]


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_online_probes_on_the_compiled_path_with_and_without_cuda_graphs(tmp_path, mode):
    """The fast path of configs/shapes_gpu.yaml with every observer on: inductor (CUDA graphs with
    reduce-overhead), bf16, channels_last. The compiled forward's features equal the eager ones
    within bf16 tolerance, and everything is logged."""
    from lightning.pytorch import Callback

    from diffprobe.capture import capture_features, eval_mode
    from diffprobe.diffusion import sampling
    from diffprobe.training.callbacks import AttentionRecorder, OnlineProbes, PredictionEvolution, ProbeMonitor
    from diffprobe.training.compiled import ObservationUNet
    from helpers import read_events

    layers = ["down_blocks.1", "mid_block"]

    class CompareWithEager(Callback):
        def on_train_end(self, trainer, pl_module):
            x, t = torch.randn(32, 3, 16, 16, device="cuda"), torch.randint(0, 100, (32,), device="cuda")
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                prediction, features = pl_module.feature_taps(x, t)
                self.compiled = (prediction.float().clone(), {k: v.clone() for k, v in features.items()})
                with capture_features(pl_module.unet, layers) as eager:
                    self.eager = (pl_module.unet(x, t).sample.float(), dict(eager))
            # The observers' own compiled forward (its own CUDA graphs under reduce-overhead)
            # samples what the eager UNet samples.
            observation = pl_module.observation_unet()
            with eval_mode(pl_module.unet), torch.autocast("cuda", dtype=torch.bfloat16):
                self.samples = [sampling.seeded_samples(unet, pl_module.scheduler, 4, seed=3, num_inference_steps=5) for unet in (observation, pl_module.unet)]
                # An output kept across the next call (the next CUDA-graph replay) stays what it was.
                kept = observation(x[:4], t[:4]).sample
                copy = kept.clone()
                observation(x[4:8], t[4:8])
                self.kept_output_intact = torch.equal(kept, copy)
            self.observation_compiled = isinstance(observation, ObservationUNet)

    check = CompareWithEager()
    data = shapes_data(image_size=16, train_size=256, heldout_size=40, batch_size=32)
    callbacks = [  # in the configs' order: SampleGrid observes before OnlineProbes reads the step's outputs
        SampleGrid(every_n_steps=4, num_images=4, num_inference_steps=3),
        OnlineProbes(layers=layers, log_every_n_steps=2),
        ProbeMonitor(every_n_steps=4, num_images=30, timesteps=[10, 90], layers=layers, batch_size=64),
        AttentionRecorder(every_n_steps=4, num_images=2),
        PredictionEvolution(every_n_steps=4, num_images=2, trajectory_steps=3),
        check,
    ]
    module = make_module(compile=True, compile_mode=mode, channels_last=True)
    trainer = make_trainer(tmp_path, max_steps=6, accelerator="gpu", devices=1, precision="bf16-mixed", callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 6 and all(torch.isfinite(p).all() for p in module.unet.parameters())
    tags = set(read_events(trainer.log_dir).Tags()["scalars"])
    assert "probe/shape/mid_block/t0010/acc" in tags and "probe_online/shape/mid_block/t0000-0049/acc" in tags
    torch.testing.assert_close(check.compiled[0], check.eager[0], rtol=0.05, atol=0.05)
    for layer in layers:
        torch.testing.assert_close(check.compiled[1][layer], check.eager[1][layer], rtol=0.05, atol=0.05)
    assert check.observation_compiled and check.kept_output_intact and "samples/ema" in read_events(trainer.log_dir).Tags()["images"]
    torch.testing.assert_close(check.samples[0], check.samples[1], rtol=0.1, atol=0.1)  # 5 bf16 sampling steps


def test_a_run_begun_on_a_cpu_resumes_on_a_gpu_with_the_fused_adamw(tmp_path):
    data = shapes_data(image_size=16, train_size=64, batch_size=8)
    make_trainer(tmp_path, max_steps=2).fit(make_module(), datamodule=data)
    gpu = make_trainer(tmp_path, max_steps=4, version=0, accelerator="gpu", devices=1, precision="bf16-mixed")
    gpu.fit(make_module(), datamodule=data, ckpt_path=tmp_path / "runs/test/version_0/checkpoints/last.ckpt")
    optimizer = gpu.optimizers[0]
    assert gpu.global_step == 4 and all(group["fused"] is True for group in optimizer.param_groups)
    assert all(state["step"].is_cuda and int(state["step"]) == 4 for state in optimizer.state.values())
