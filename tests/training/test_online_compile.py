"""Online probes on the fast path: the features come out of the (compiled) training forward itself,
the heads train in the same backward and optimizer step, and none of it changes the UNet's
training; the heads survive a resume, and a resume may add or drop them.

torch.compile runs with the ``aot_eager`` backend here: dynamo captures the same graph as with
inductor (the taps are outputs of it), without generating C++ for a few training steps."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, seed_everything

from diffprobe.capture import capture_features
from diffprobe.capture.eager import eager
from diffprobe.training.callbacks import OnlineProbes
from helpers import make_module, make_trainer, read_events, shapes_data

LAYERS = ["down_blocks.1", "mid_block"]
COMPILED = dict(compile=True, compile_backend="aot_eager")


def _fit(root, with_probes: bool, max_steps: int = 3, ckpt_path=None, extra=(), layers=LAYERS, **module_options):
    seed_everything(0)
    module = make_module(weight_decay=0.1, **module_options)
    callbacks = [OnlineProbes(layers=layers, num_buckets=2, log_every_n_steps=1)] if with_probes else []
    # Clipping is active at this threshold: the UNet must be clipped over its own gradients only.
    trainer = make_trainer(root, max_steps=max_steps, callbacks=[*callbacks, *extra], gradient_clip_val=0.05, version=0)
    trainer.fit(module, datamodule=shapes_data(train_size=64, batch_size=16), ckpt_path=ckpt_path)
    return trainer, module


class CompareWithEager(Callback):
    """At the end of training, the compiled tapped forward against the eager UNet on one batch."""

    def on_train_end(self, trainer, pl_module):
        # A batch of training's shape (16): the comparison runs training's own graphs, not new ones.
        x, t = torch.randn(16, 3, 16, 16), torch.tensor([3, 30, 60, 99]).repeat(4)
        with torch.no_grad():
            self.compiled = pl_module.feature_taps(x, t)
            with capture_features(pl_module.unet, LAYERS) as features:
                self.eager = (pl_module.unet(x, t).sample, dict(features))
            # The heads are compiled too (one fused chain, not many small eager kernels per step).
            labels = torch.zeros(16, pl_module.probe_heads.num_concepts, dtype=torch.long)  # class 0 exists in every concept
            self.heads_compiled = pl_module.probe_heads(self.eager[1], t, labels)
            with eager(pl_module.probe_heads):
                self.heads_eager = pl_module.probe_heads(self.eager[1], t, labels)
        self.was_compiled = not pl_module.needs_compile
        self.heads_were_compiled = pl_module.probe_heads._compiled_call_impl is not None


def test_compiled_training_hands_out_the_eager_features_and_logs_online_probes(tmp_path):
    check = CompareWithEager()
    trainer, module = _fit(tmp_path, with_probes=True, extra=[check], **COMPILED)
    assert check.was_compiled and check.heads_were_compiled
    tags = set(read_events(trainer.log_dir).Tags()["scalars"])
    assert {"probe_online/shape/mid_block/t0000-0049/acc", "probe_online/size/down_blocks.1/t0050-0099/acc"} <= tags
    torch.testing.assert_close(check.compiled[0], check.eager[0], rtol=1e-5, atol=1e-5)
    for layer in LAYERS:
        torch.testing.assert_close(check.compiled[1][layer], check.eager[1][layer], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(check.heads_compiled[0], check.heads_eager[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(check.heads_compiled[1], check.heads_eager[1]) and torch.equal(check.heads_compiled[2], check.heads_eager[2])
    assert module.feature_taps is None and module.probe_heads is None  # taken off at the end of fit


def test_probes_on_or_off_leave_the_unets_training_identical(tmp_path):
    _, without = _fit(tmp_path / "off", with_probes=False)
    trainer, with_probes = _fit(tmp_path / "on", with_probes=True)
    for key, value in without.unet.state_dict().items():
        assert torch.equal(value, with_probes.unet.state_dict()[key]), key
    # The heads did train: their own group, own learning rate, no weight decay.
    group = trainer.optimizers[0].param_groups[1]
    assert group["lr"] == 1e-3 and group["weight_decay"] == 0.0
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == 0.1


def test_value_clipping_and_a_zero_threshold_act_on_the_unet_alone():
    from lightning.pytorch.utilities import GradClipAlgorithmType

    module = make_module()
    module.attach_probe_heads(LAYERS, "mean", [4, 6], 2, 1e-3)
    for p in [*module.trained_parameters(), *module.probe_heads.parameters()]:
        p.grad = torch.full_like(p, 3.0)
    module.configure_gradient_clipping(None, 0, GradClipAlgorithmType.NORM)  # 0: off, as in Lightning
    assert all(torch.all(p.grad == 3.0) for p in module.trained_parameters())
    module.configure_gradient_clipping(None, 0.5, GradClipAlgorithmType.VALUE)
    assert all(torch.all(p.grad == 0.5) for p in module.trained_parameters())
    assert all(torch.all(p.grad == 3.0) for p in module.probe_heads.parameters())


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
    assert "probe_heads" not in " ".join(torch.load(tmp_path / "a/runs/test/version_0/checkpoints/last.ckpt", weights_only=True)["state_dict"])
    assert trainer.global_step == 3
    _fit(tmp_path / "b", with_probes=False, max_steps=2)
    trainer, module = _fit(tmp_path / "b", with_probes=True, max_steps=3, ckpt_path=tmp_path / "b/runs/test/version_0/checkpoints/last.ckpt")
    assert len(trainer.optimizers[0].param_groups) == 2 and trainer.global_step == 3
    # and may change them: other layers give other heads, which start fresh.
    _fit(tmp_path / "b", with_probes=True, max_steps=4, ckpt_path=tmp_path / "b/runs/test/version_0/checkpoints/last.ckpt", layers=["mid_block"])
