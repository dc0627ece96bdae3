"""Online probes on the fast path: the features come out of the (compiled) training forward itself,
the heads train in the same backward and optimizer step, and none of it changes the UNet's
training; the heads survive a resume, and a resume may add or drop them.

torch.compile runs with the ``aot_eager`` backend here: dynamo captures the same graph as with
inductor (the taps are outputs of it), without generating C++ for a few training steps."""

from __future__ import annotations

import torch
from lightning.pytorch import seed_everything

from diffprobe.callbacks import OnlineProbes
from diffprobe.capture import capture_features
from helpers import make_module, make_trainer, read_events, shapes_data

LAYERS = ["down_blocks.1", "mid_block"]
COMPILED = dict(compile=True, compile_backend="aot_eager")


def _fit(root, with_probes: bool, max_steps: int = 3, ckpt_path=None, **module_options):
    seed_everything(0)
    module = make_module(weight_decay=0.1, **module_options)
    callbacks = [OnlineProbes(layers=LAYERS, num_buckets=2, log_every_n_steps=1)] if with_probes else []
    # Clipping is active at this threshold: the UNet must be clipped over its own gradients only.
    trainer = make_trainer(root, max_steps=max_steps, callbacks=callbacks, gradient_clip_val=0.05, version=0)
    trainer.fit(module, datamodule=shapes_data(train_size=64, batch_size=16), ckpt_path=ckpt_path)
    return trainer, module


def test_compiled_training_hands_out_the_eager_features_and_logs_online_probes(tmp_path):
    trainer, module = _fit(tmp_path, with_probes=True, **COMPILED)
    assert module._compiled and module._taps is not None
    tags = set(read_events(trainer.log_dir).Tags()["scalars"])
    assert {"probe_online/shape/mid_block/t0000-0049/acc", "probe_online/size/down_blocks.1/t0050-0099/acc"} <= tags
    x = torch.randn(4, 3, 16, 16)
    t = torch.tensor([3, 30, 60, 99])
    with torch.no_grad():
        compiled_prediction, compiled_features = module._taps(x, t)
        with capture_features(module.unet, LAYERS) as eager_features:
            eager_prediction = module.unet(x, t).sample
    torch.testing.assert_close(compiled_prediction, eager_prediction, rtol=1e-5, atol=1e-5)
    for layer in LAYERS:
        torch.testing.assert_close(compiled_features[layer], eager_features[layer], rtol=1e-5, atol=1e-5)


def test_probes_on_or_off_leave_the_unets_training_identical(tmp_path):
    _, without = _fit(tmp_path / "off", with_probes=False)
    _, with_probes = _fit(tmp_path / "on", with_probes=True)
    for key, value in without.unet.state_dict().items():
        assert torch.equal(value, with_probes.unet.state_dict()[key]), key
    # The heads did train: their own group, own learning rate, no weight decay.
    group = with_probes.trainer.optimizers[0].param_groups[1]
    assert group["lr"] == 1e-3 and group["weight_decay"] == 0.0
    assert with_probes.trainer.optimizers[0].param_groups[0]["weight_decay"] == 0.1


def test_heads_are_saved_and_restored_on_resume_under_compile(tmp_path):
    first, module = _fit(tmp_path, with_probes=True, max_steps=2, **COMPILED)
    last = tmp_path / "runs/test/version_0/checkpoints/last.ckpt"
    saved = torch.load(last, weights_only=True)
    heads = {k: v for k, v in saved["state_dict"].items() if k.startswith("probe_heads.")}
    assert heads and len(saved["optimizer_states"][0]["param_groups"]) == 2
    seed_everything(0)
    resumed = make_module(weight_decay=0.1, **COMPILED)
    restored = {}

    class Peek(OnlineProbes):
        def on_train_start(self, trainer, pl_module):
            restored.update({k: v.clone() for k, v in pl_module.state_dict().items() if k.startswith("probe_heads.")})

    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[Peek(layers=LAYERS, num_buckets=2, log_every_n_steps=1)], gradient_clip_val=0.05, version=0)
    trainer.fit(resumed, datamodule=shapes_data(train_size=64, batch_size=16), ckpt_path=last)
    assert restored.keys() == heads.keys() and all(torch.equal(restored[k], heads[k]) for k in heads)
    final = torch.load(last, weights_only=True)["optimizer_states"][0]
    head_index = final["param_groups"][1]["params"][0]
    assert final["state"][head_index]["step"] == 4  # the heads' moments continued, not restarted


def test_a_resume_may_drop_or_add_online_probes(tmp_path):
    _fit(tmp_path / "a", with_probes=True, max_steps=2)
    trainer, module = _fit(tmp_path / "a", with_probes=False, max_steps=3, ckpt_path=tmp_path / "a/runs/test/version_0/checkpoints/last.ckpt")
    assert module.probe_heads is None and trainer.global_step == 3
    _fit(tmp_path / "b", with_probes=False, max_steps=2)
    trainer, module = _fit(tmp_path / "b", with_probes=True, max_steps=3, ckpt_path=tmp_path / "b/runs/test/version_0/checkpoints/last.ckpt")
    assert module.probe_heads is not None and len(trainer.optimizers[0].param_groups) == 2 and trainer.global_step == 3
