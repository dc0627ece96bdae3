"""The observers' compiled UNet (diffprobe.training.compiled.ObservationUNet): the same samples as the eager
UNet, one graph for a whole reverse process (never one per timestep), used by SampleGrid and
PredictionEvolution during a compiled fit, and out of the way everywhere else.

A counting backend stands in for inductor: it records every graph dynamo hands it and runs it as
traced (aot_eager's numbers), without generating C++."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback

from diffprobe.diffusion import sampling
from diffprobe.training.callbacks import PredictionEvolution, SampleGrid
from diffprobe.training.compiled import ObservationUNet
from helpers import make_module, make_trainer, read_events, shapes_data


class CountingBackend:
    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def test_compiled_sampling_matches_eager_with_one_graph_for_every_timestep():
    torch.manual_seed(0)
    unet = make_module().unet.eval()
    backend = CountingBackend()
    observed = ObservationUNet(unet, backend=backend)
    assert observed.config is unet.config and observed.device == unet.device  # stands in for the UNet
    eager = sampling.seeded_samples(unet, make_module().scheduler, 3, seed=1, num_inference_steps=12)
    compiled = sampling.seeded_samples(observed, make_module().scheduler, 3, seed=1, num_inference_steps=12)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    graphs = backend.graphs
    assert graphs >= 1  # it did compile ...
    sampling.seeded_samples(observed, make_module().scheduler, 3, seed=2, num_inference_steps=20)
    assert backend.graphs == graphs  # ... once: other timesteps, seeds and step counts reuse the graph
    prediction = observed(torch.randn(3, 3, 16, 16), 7).sample  # a Python int is made a tensor, not a new graph
    assert backend.graphs == graphs and prediction.shape == (3, 3, 16, 16)


def test_a_compiled_fit_samples_and_predicts_through_the_observation_unet(tmp_path, monkeypatch):
    calls = []
    original = ObservationUNet.__call__
    monkeypatch.setattr(ObservationUNet, "__call__", lambda self, *args, **kwargs: calls.append(1) or original(self, *args, **kwargs))

    class DuringFit(Callback):
        def on_fit_start(self, trainer, pl_module):
            self.observation_unet = pl_module.observation_unet()

    during = DuringFit()
    module = make_module(compile=True, compile_backend="aot_eager")
    evolution = PredictionEvolution(every_n_steps=2, num_images=2, trajectory_steps=3, trajectory_every=1)
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[during, SampleGrid(every_n_steps=2, num_images=2, num_inference_steps=3), evolution])
    trainer.fit(module, datamodule=shapes_data(train_size=32, batch_size=8))
    assert isinstance(during.observation_unet, ObservationUNet)
    # Two evaluations (steps 0 and 2), each: 3 sampling steps, one prediction per PredictionEvolution
    # timestep and a 3-step trajectory.
    assert len(calls) == 2 * (3 + len(evolution.timesteps) + 3)
    assert "samples/ema" in read_events(trainer.log_dir).Tags()["images"]
    # Observing never marks CUDA-graph steps by hand: after one mark, torch counts generations by
    # the marks alone for the rest of the process, and training's CUDA graphs would stop replaying.
    from torch._inductor.cudagraph_trees import MarkStepBox

    assert MarkStepBox.mark_step_counter == 0
    # After the fit (a notebook) the UNet itself samples again, and the observers' graphs are let go.
    assert module.observation_unet() is module.unet


def test_samples_after_a_compiled_fit_run_the_unet_eagerly(tmp_path):
    module = make_module(compile=True, compile_backend="aot_eager")
    make_trainer(tmp_path, max_steps=1).fit(module, datamodule=shapes_data(train_size=16, batch_size=8))
    assert module.unet._compiled_call_impl is not None  # training compiled it in place (no OnlineProbes)

    def training_graph(*args, **kwargs):
        raise AssertionError("sampling after the fit ran training's compiled graph")

    module.unet._compiled_call_impl = training_graph
    images = module.sample(2, num_inference_steps=3)
    assert images.shape == (2, 3, 16, 16) and module.unet._compiled_call_impl is training_graph  # put back as it was
