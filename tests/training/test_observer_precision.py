"""Observers run the UNet in the training step's precision (bf16 autocast under bf16-mixed, here on
the CPU) and hand out float32 results; probes are fitted outside autocast."""

import torch
from lightning.pytorch import Callback

from diffprobe.probes import fit
from diffprobe.training.callbacks import AttentionRecorder, PredictionEvolution, ProbeMonitor, SampleGrid
from helpers import make_module, make_trainer, read_events, shapes_data


def test_every_observer_runs_the_unet_under_the_training_autocast_and_fits_probes_outside(tmp_path, monkeypatch):
    seen: dict[str, set] = {}

    class WhoRunsTheUnet(Callback):
        """Records, per observer, whether the UNet's forwards ran under CPU bf16 autocast."""

        def on_fit_start(self, trainer, pl_module):
            def hook(module, args):
                seen.setdefault(running["who"], set()).add(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)

            pl_module.unet.register_forward_pre_hook(hook)

    running = {"who": "training"}
    observers = [
        SampleGrid(every_n_steps=2, num_images=2, num_inference_steps=3),
        ProbeMonitor(every_n_steps=2, num_images=12, timesteps=[0, 50, 99], layers=["mid_block"], method="logistic", heatmaps=False),
        AttentionRecorder(every_n_steps=2, num_images=2),
        PredictionEvolution(every_n_steps=2, num_images=2, trajectory_steps=3, trajectory_every=1),
    ]
    for observer in observers:  # tag each observer's UNet calls with its name
        original, name = observer.observe, type(observer).__name__

        def observe(trainer, pl_module, step, original=original, name=name):
            running["who"] = name
            try:
                original(trainer, pl_module, step)
            finally:
                running["who"] = "training"

        monkeypatch.setattr(observer, "observe", observe)
    fitted_under_autocast = []
    logistic = fit._logistic_fit
    monkeypatch.setattr(fit, "_logistic_fit", lambda *a, **k: fitted_under_autocast.append(torch.is_autocast_enabled("cpu")) or logistic(*a, **k))

    data = shapes_data()
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[WhoRunsTheUnet(), *observers], precision="bf16-mixed")
    trainer.fit(make_module(data=data), datamodule=data)

    assert seen == {name: {True} for name in ("training", "SampleGrid", "ProbeMonitor", "AttentionRecorder", "PredictionEvolution")}
    assert fitted_under_autocast and not any(fitted_under_autocast)
    events = read_events(trainer.log_dir)
    accuracy = events.Scalars("probe/shape/mid_block/t0050/acc")
    assert [e.step for e in accuracy] == [0, 2] and all(0 <= e.value <= 1 for e in accuracy)
    psnr = [e.value for tag in events.Tags()["scalars"] if tag.startswith("denoise/psnr/") for e in events.Scalars(tag)]
    assert len(psnr) == 16 and all(torch.isfinite(torch.tensor(psnr)))  # 8 t x steps 0 and 2
    assert {"samples/ema", "pred/trajectory"} <= set(events.Tags()["images"])
