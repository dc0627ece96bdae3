"""Live probes during training: ProbeMonitor and OnlineProbes write their tags, keep state, and
never touch the UNet's gradients."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from diffprobe.data.probe_set import ProbeSet
from diffprobe.training.callbacks import OnlineProbes, ProbeMonitor
from helpers import make_module, make_trainer, read_events, shapes_data

LAYERS = ["down_blocks.1", "mid_block"]


def test_probe_monitor_logs_scalars_heatmaps_layout_saves_the_probe_set_and_its_history_survives_resume(tmp_path):
    data = shapes_data(heldout_size=40)
    monitor = ProbeMonitor(every_n_steps=2, num_images=30, timesteps=[0, 50, 99], layers=LAYERS, method="ridge", heatmaps=True)
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[monitor])
    trainer.fit(make_module(), datamodule=data)
    events = read_events(trainer.log_dir)
    scalars = set(events.Tags()["scalars"])
    expected = {f"probe/{c}/{layer}/t{t:04d}/acc" for c in data.concepts for layer in LAYERS for t in (0, 50, 99)}
    assert expected <= scalars
    assert [e.step for e in events.Scalars("probe/shape/mid_block/t0050/acc")] == [0, 2]
    images = set(events.Tags()["images"])
    assert "probe_heatmap/concept/background_colour" in images and "probe_heatmap/layer/mid_block" in images
    # the summary a reader starts from, in TensorBoard's first group
    assert {"Overview/decodable_t_over_training", "Overview/decodability_over_training"} <= images
    decodable = [e.value for e in events.Scalars("Overview/decodable_t/background_colour")]
    k = monitor.history[0]["concepts"].index("background_colour")
    expected_t = [max((t for t, d in zip(h["timesteps"], h["decodable"][:, k].tolist()) if d), default=-1) for h in monitor.history]
    assert len(decodable) == 2 and decodable == expected_t
    assert (tmp_path / "runs/test/version_0/probe_set.pt").exists()
    assert ProbeSet.load(tmp_path / "runs/test/version_0/probe_set.pt").timesteps.tolist() == [0, 50, 99]
    assert [h["step"] for h in monitor.history] == [0, 2] and monitor.history[0]["accuracy"].shape == (2, 3, 6)
    layout_events = list((tmp_path / "runs/test/version_0").glob("events.*"))
    assert any(b"custom_scalars" in p.read_bytes() for p in layout_events)

    # The history survives a resume (the same monitor settings, so the same state key).
    resumed = ProbeMonitor(every_n_steps=2, num_images=30, timesteps=[0, 50, 99], layers=LAYERS, method="ridge", heatmaps=False)
    second = make_trainer(tmp_path, max_steps=4, version=0, callbacks=[resumed])
    second.fit(make_module(), datamodule=data, ckpt_path=tmp_path / "runs/test/version_0/checkpoints/last.ckpt")
    assert [h["step"] for h in resumed.history] == [0, 2, 4]


def test_online_probes_log_per_bucket_and_leave_unet_gradients_alone(tmp_path):
    data = shapes_data(train_size=64, batch_size=16)
    grads = {}

    class RecordGrads(Callback):
        def __init__(self, key):
            self.key = key

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads.setdefault(self.key, []).append([p.grad.clone() for p in pl_module.unet.parameters()])

    def run(with_probes: bool, root):
        torch.manual_seed(0)
        module = make_module()
        callbacks = [RecordGrads(with_probes)] + ([OnlineProbes(layers=LAYERS, num_buckets=2, log_every_n_steps=2)] if with_probes else [])
        trainer = make_trainer(root, max_steps=4, callbacks=callbacks)
        torch.manual_seed(1)
        trainer.fit(module, datamodule=data)
        return trainer

    run(False, tmp_path / "a")
    trainer = run(True, tmp_path / "b")
    for without, with_ in zip(grads[False], grads[True]):
        assert all(torch.equal(a, b) for a, b in zip(without, with_))
    scalars = set(read_events(trainer.log_dir).Tags()["scalars"])
    assert {"probe_online/shape/mid_block/t0000-0049/acc", "probe_online/texture/down_blocks.1/t0050-0099/acc"} <= scalars
    # logged once per measurement (steps 2 and 4), not again at every log_every_n_steps in between
    assert [e.step for e in read_events(trainer.log_dir).Scalars("probe_online/shape/mid_block/t0000-0049/acc")] == [2, 4]
    saved = torch.load(Path(trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    heads = {k for k in saved if k.startswith("probe_heads.")}
    assert heads == {f"probe_heads.heads.{k}" for k in ("down_blocks_1.weight", "down_blocks_1.bias", "mid_block.weight", "mid_block.bias")}


def test_online_heads_learn_a_planted_concept_in_one_matmul_per_layer():
    from diffprobe.diffusion.metrics import CellAccuracy
    from diffprobe.probes.heads import ProbeHeads

    torch.manual_seed(0)
    heads = ProbeHeads({"mid_block": 8}, num_classes=[3, 2], num_buckets=2, num_train_timesteps=100)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=0.05, weight_decay=0.0)
    accuracy = CellAccuracy((1, 2, 2))
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(3, 8, generator=g) * 2
    for step in range(150):
        labels = torch.stack([torch.randint(0, 3, (32,), generator=g), torch.randint(0, 2, (32,), generator=g)], 1)
        features = {"mid_block": directions[labels[:, 0]] + torch.randn(32, 8, generator=g)}
        loss, correct, bucket, _ = heads(features, torch.randint(0, 100, (32,), generator=g), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 100:
            accuracy.reset()
        accuracy.update(correct, bucket)
    result = accuracy.compute()  # (1 layer, 2 buckets, 2 concepts), last 50 batches
    assert (result[0, :, 0] > 0.9).all(), "the planted concept is decoded in both buckets"
    assert (result[0, :, 1] < 0.7).all(), "the noise concept stays near chance (0.5)"
    assert isinstance(heads.heads["mid_block"], torch.nn.Linear) and heads.heads["mid_block"].out_features == 2 * 2 * 3


def test_heads_learn_only_from_the_rows_they_are_given():
    from diffprobe.probes.heads import ProbeHeads

    torch.manual_seed(0)
    heads = ProbeHeads({"mid_block": 4}, num_classes=[3], num_buckets=1, num_train_timesteps=100)
    features, labels, t = {"mid_block": torch.randn(6, 4, requires_grad=True)}, torch.randint(0, 3, (6, 1)), torch.zeros(6, dtype=torch.long)
    used = torch.tensor([True, False, True, False, False, False])
    loss, _, _, weight = heads(features, t, labels, used)
    only = heads({"mid_block": features["mid_block"][used]}, t[used], labels[used])[0]
    assert torch.allclose(loss, only) and torch.equal(weight, used.float())
    none = heads(features, t, labels, torch.zeros(6, dtype=torch.bool))[0]
    assert float(none) == 0.0, "no row used: no loss, not NaN"


def test_online_probes_of_a_conditional_model_read_only_caption_dropped_samples(tmp_path, monkeypatch):
    """With the caption the features carry it, and heads on them read the caption (0.4-0.7 at pure
    noise on an untrained model); the heads learn from, and are scored on, exactly the samples
    trained on the empty caption, so on pure noise they stay at chance."""
    from diffprobe.diffusion.captions import CaptionEncoder
    from diffprobe.probes.heads import ProbeHeads

    kept, used = [], []
    encode, forward = CaptionEncoder.encode, ProbeHeads.forward
    monkeypatch.setattr(CaptionEncoder, "encode", lambda self, captions, drop_probability=0.0, keep=None: kept.append(keep) or encode(self, captions, drop_probability, keep))
    monkeypatch.setattr(ProbeHeads, "forward", lambda self, f, t, labels, rows_used=None: used.append(rows_used) or forward(self, f, t, labels, rows_used))
    data = shapes_data(train_size=128, batch_size=64)
    module = make_module(conditional=True, data=data, condition_dropout=0.5, learning_rate=1e-12, num_train_timesteps=1000)
    module.scheduler.add_noise = lambda x0, noise, t: noise  # every input pure noise: only a caption could tell the labels
    probes = OnlineProbes(layers=["mid_block", "up_blocks.1"], num_buckets=1, learning_rate=0.05, log_every_n_steps=12)
    trainer = make_trainer(tmp_path, max_steps=12, callbacks=[probes])
    trainer.fit(module, datamodule=data)
    assert len(kept) == len(used) == 12
    for keep, rows in zip(kept, used):
        assert torch.equal(rows, ~keep), "the heads use exactly the rows whose caption was dropped"
        assert 0 < int(rows.sum()) < 64
    events = read_events(trainer.log_dir)
    chance = {"background_colour": 1 / 4, "object_colour": 1 / 6, "shape": 1 / 4, "size": 1 / 3, "position": 1 / 9, "texture": 1 / 4}
    for concept, level in chance.items():
        for layer in ("mid_block", "up_blocks.1"):
            (last,) = events.Scalars(f"probe_online/{concept}/{layer}/t0000-0999/acc")[-1:]
            assert last.value < level + 0.2, f"{concept} at {layer}: {last.value:.2f} on pure noise, chance {level:.2f}"


def test_online_probes_refuse_a_conditional_model_without_caption_dropout(tmp_path):
    data = shapes_data(train_size=64, batch_size=16)
    trainer = make_trainer(tmp_path, max_steps=1, callbacks=[OnlineProbes(layers=["mid_block"])])
    with pytest.raises(ValueError, match="condition_dropout 0 leaves none"):
        trainer.fit(make_module(conditional=True, data=data, condition_dropout=0.0), datamodule=data)


def test_probe_monitor_refuses_timesteps_beyond_the_models_T(tmp_path):
    monitor = ProbeMonitor(every_n_steps=2, num_images=20, timesteps=[10, 500], layers=["mid_block"])
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[monitor])
    with pytest.raises(ValueError, match=r"timesteps \[500\] are outside \[0, 100\)"):
        trainer.fit(make_module(), datamodule=shapes_data(heldout_size=30))
    assert not list((tmp_path / "runs").rglob("*.ckpt")), "it fails before any training step"
