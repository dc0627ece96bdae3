"""AttentionRecorder writes its tags for unconditional and conditional models; its statistics
behave on attention patterns with a known answer; bad input is named."""

import math

import pytest
import torch

from diffprobe.training.callbacks import AttentionRecorder
from diffprobe.training.callbacks.attention_recorder import attention_statistics, query_points_from_masks
from helpers import make_module, make_trainer, read_events, shapes_data


def test_statistics_on_uniform_and_identity_attention():
    uniform = torch.full((2, 16, 16), 1 / 16)
    entropy, distance = attention_statistics(uniform)
    assert math.isclose(float(entropy), math.log(16), rel_tol=1e-5) and float(distance) > 0.3
    identity = torch.eye(16).expand(2, 16, 16)
    entropy, distance = attention_statistics(identity)
    assert float(entropy) < 1e-6 and float(distance) == 0.0


def test_query_points_sit_on_the_object_and_off_it():
    data = shapes_data(heldout_size=6).heldout_dataset()
    masks = torch.stack([data[i]["mask"] for i in range(6)])
    objects, backgrounds = query_points_from_masks(masks, 6)
    for mask, obj, bg in zip(masks[:, 0], objects, backgrounds):
        size = mask.shape[-1]
        assert mask[int(obj[1] * size), int(obj[0] * size)], "the object query is on the object"
        assert not mask[int(bg[1] * size), int(bg[0] * size)], "the background query is off it"


@pytest.mark.parametrize("conditional", [False, True])
def test_recorder_logs_maps_statistics_and_token_maps(tmp_path, conditional):
    data = shapes_data(heldout_size=8)
    recorder = AttentionRecorder(every_n_steps=2, num_images=2, timesteps=[10, 90])
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[recorder])
    trainer.fit(make_module(conditional=conditional, data=data), datamodule=data)
    tags = read_events(trainer.log_dir).Tags()
    layer = recorder.layers[0]
    assert f"attention/{layer}" in set(tags["images"])  # one figure per layer, a row per t
    assert {f"attention_entropy/{layer}/t0010", f"attention_distance/{layer}/t0090", f"attention_object_mass/{layer}/t0010"} <= set(tags["scalars"])
    if conditional:
        caption = data.heldout_dataset().caption(0).split()
        assert f"cross_attention/04_{caption[4]}/t0010" in tags["images"]
        assert f"cross_attention_mass/02_{caption[2]}/t0090" in tags["scalars"]
        assert "cross_attention/mass_curves" in tags["images"]


def test_unknown_layer_is_named_before_training(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[AttentionRecorder(layers=["mid_block"])])
    with pytest.raises(ValueError, match=r"no self-attention module\(s\) \['mid_block'\]"):
        trainer.fit(make_module(), datamodule=shapes_data())


ONE_LAYER = ["mid_block.attentions.0"]  # a figure per layer is most of a recording's cost


def test_recorders_resume_with_their_grid_and_without_relogging(tmp_path):
    from diffprobe.training.callbacks import PredictionEvolution

    data = shapes_data(heldout_size=8)
    first = [AttentionRecorder(every_n_steps=2, num_images=1, timesteps=[10, 90], layers=ONE_LAYER), PredictionEvolution(every_n_steps=2, num_images=2, timesteps=[20, 80], trajectory_steps=0)]
    make_trainer(tmp_path, max_steps=2, callbacks=first).fit(make_module(), datamodule=data)
    again = [AttentionRecorder(every_n_steps=2, num_images=1, layers=ONE_LAYER), PredictionEvolution(every_n_steps=2, num_images=2, trajectory_steps=0)]
    trainer = make_trainer(tmp_path, max_steps=4, version=0, callbacks=again)
    trainer.fit(make_module(), datamodule=data, ckpt_path=tmp_path / "runs/test/version_0/checkpoints/last.ckpt")
    assert again[0].timesteps == [10, 90] and again[1].timesteps == [20, 80]
    steps = [e.step for e in read_events(trainer.log_dir).Images("pred/x0_hat")]
    assert steps == [0, 2, 4], "step 2 is not logged twice after resuming"
