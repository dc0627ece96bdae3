"""Export -> diffusers pipeline; fine-tune from a diffusers folder; every bad pretrained input."""

import json

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from diffprobe.diffusion import sampling
from diffprobe.diffusion.folders import load_exported
from diffprobe.training import checkpoints
from helpers import TINY_UNET, make_module, make_trainer, write_ddpm_cifar10_folder


def test_export_loads_in_ddpm_pipeline_and_matches_our_sampler(tmp_path):
    module = make_module()
    with torch.no_grad():  # make EMA and raw weights differ, so the test can tell which was exported
        for p in module.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = checkpoints.export_module(module, tmp_path / "export")
    pipeline = DDPMPipeline.from_pretrained(out)
    theirs = pipeline(batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=5, output_type="np").images
    with module.ema_weights():
        ours = sampling.generate(
            module.unet, DDPMScheduler.from_config(module.scheduler.config), batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(7)
        )
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert theirs.shape == (2, 16, 16, 3)
    assert abs(theirs - ours).max() < 1e-5
    assert torch.equal(next(pipeline.unet.parameters()), module.ema.shadow_params[0])


def test_export_never_writes_into_an_existing_folder(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        checkpoints.export_module(make_module(), tmp_path / "export")
    assert (tmp_path / "export" / "mine.txt").read_text() == "keep me"


def test_conditional_export_round_trips(tmp_path, tiny_data):
    module = make_module(conditional=True, data=tiny_data)
    loaded = load_exported(checkpoints.export_module(module, tmp_path / "cond"))
    caption = [tiny_data.heldout_dataset().caption(0)]
    with module.ema_weights():
        expected = module.caption_encoder.encode(caption)
    assert torch.allclose(loaded.caption_encoder.encode(caption), expected)
    assert type(loaded.unet).__name__ == "UNet2DConditionModel"


def test_fine_tune_from_the_ddpm_cifar10_folder(tmp_path, tiny_data):
    written = write_ddpm_cifar10_folder(tmp_path / "ddpm-cifar10-32")
    from helpers import shapes_data

    data = shapes_data(image_size=32, train_size=4, batch_size=2)
    module = make_module(preset=None, unet=None, pretrained=str(tmp_path / "ddpm-cifar10-32"), image_size=32)
    assert torch.equal(next(module.unet.parameters()), next(written.parameters())), "weights come from the folder"
    assert module.scheduler.config.variance_type == "fixed_large" and module.num_train_timesteps == 1000
    trainer = make_trainer(tmp_path, max_steps=1, checkpoints=False)  # 36M parameters: no checkpoint files to write
    trainer.fit(module, datamodule=data)
    assert not torch.equal(next(module.unet.parameters()), next(written.parameters()))


def test_pretrained_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        make_module(unet=None, pretrained=str(tmp_path / "missing"))
    DDPMScheduler().save_pretrained(tmp_path / "sched")
    with pytest.raises(FileNotFoundError, match="no config.json.*not a diffusers UNet"):
        make_module(unet=None, pretrained=str(tmp_path / "sched"))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="holds a AutoencoderKL.*needs a UNet2DModel"):
        make_module(unet=None, pretrained=str(tmp_path / "vae"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        make_module(unet=None, pretrained=str(tmp_path / "empty"))
    UNet2DModel(sample_size=16, in_channels=1, out_channels=1, **TINY_UNET).save_pretrained(tmp_path / "gray")
    with pytest.raises(ValueError, match="takes 1-channel images but the data gives 3"):
        make_module(unet=None, pretrained=str(tmp_path / "gray"))
    with pytest.raises(ValueError, match="needs a UNet2DConditionModel"):
        make_module(conditional=True, unet=None, pretrained=str(tmp_path / "gray"))


def test_pretrained_of_another_shape_is_refused(tmp_path):
    unet = UNet2DModel(sample_size=16, **TINY_UNET)
    unet.save_pretrained(tmp_path / "u")
    config = json.loads((tmp_path / "u" / "config.json").read_text())
    config["block_out_channels"] = [8, 32]  # config says one shape, weights hold another
    (tmp_path / "u" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit its UNet config"):
        make_module(unet=None, pretrained=str(tmp_path / "u"))
    with pytest.raises(ValueError, match="cannot be combined with --model.pretrained"):
        make_module(unet={"block_out_channels": [8, 16]}, pretrained=str(tmp_path / "u"))


def test_checkpoint_that_is_not_diffprobes_is_named(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a diffprobe checkpoint"):
        checkpoints.load_module(tmp_path / "other.ckpt")
    with pytest.raises(FileNotFoundError):
        checkpoints.load_module(tmp_path / "nothing.ckpt")
