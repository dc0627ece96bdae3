"""Stable Diffusion (v1.x / v2.x) as an ``ExplainModel``: the paper's own setting.

x_t lives in the VAE's latent space (4, h, w); the prompt goes through the CLIP tokenizer and text
encoder; ``decode`` shows latents as images through the VAE. For token relevance the text encoder
runs with eager attention, because only eager attention returns the probabilities: in
transformers 5 an SDPA text encoder asked for ``output_attentions=True`` returns an EMPTY tuple
(and only logs a warning), so the encoder is loaded eager and every trace checks it got one
attention per layer.

Needs ``transformers`` (``pip install 'diffprobe[sd]'``) and a local pipeline folder; nothing
is downloaded here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffprobe.explain.model import ExplainModel, Prompt, TracedText

DOWNLOAD_HINT = (
    "download it with `hf download CompVis/stable-diffusion-v1-4 --local-dir {folder} "
    "--include 'model_index.json' 'unet/*' 'vae/*' 'text_encoder/*' 'tokenizer/*' 'scheduler/*'` "
    "(needs network once) and pass --ckpt {folder}"
)
# What each component folder must hold for the pipeline to load; weights in either format, any variant.
REQUIRED_FILES: dict[str, tuple[tuple[str, ...], str]] = {
    "unet": (("*.safetensors", "*.bin"), "weights (diffusion_pytorch_model.safetensors)"),
    "vae": (("*.safetensors", "*.bin"), "weights (diffusion_pytorch_model.safetensors)"),
    "text_encoder": (("*.safetensors", "*.bin"), "weights (model.safetensors)"),
    "tokenizer": (("vocab.json", "tokenizer.json"), "vocab.json / tokenizer.json"),
    "scheduler": (("scheduler_config.json",), "scheduler_config.json"),
}


def _model_index(path: Path) -> dict | None:
    index = path / "model_index.json"
    if not index.is_file():
        return None
    try:
        return json.loads(index.read_text())
    except json.JSONDecodeError:
        return None


def is_stable_diffusion_folder(path: str | Path) -> bool:
    """True when ``path`` is a diffusers folder whose model_index.json names a StableDiffusion pipeline."""
    index = _model_index(Path(path).expanduser())
    return index is not None and "StableDiffusion" in str(index.get("_class_name", ""))


def check_stable_diffusion_folder(folder: str | Path) -> dict:
    """The folder's model_index.json, after checking every component the explainer loads is there.
    Raises FileNotFoundError (with how to download it) or ValueError (a pipeline it cannot explain)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"Stable Diffusion folder {path} does not exist: {DOWNLOAD_HINT.format(folder=path)}")
    index = _model_index(path)
    if index is None:
        raise FileNotFoundError(
            f"{path} has no (readable) model_index.json, so it is not a diffusers Stable Diffusion pipeline folder: "
            + DOWNLOAD_HINT.format(folder=path)
        )
    if "text_encoder_2" in index:
        # SDXL's second text encoder would be silently ignored, giving wrong conditions.
        raise ValueError(
            f"{path} holds a {index.get('_class_name')} with two text encoders (SDXL); only SD v1.x / v2.x pipelines are supported"
        )
    for component, (patterns, what) in REQUIRED_FILES.items():
        sub = path / component
        if component not in index or not index[component] or index[component][0] is None:
            raise FileNotFoundError(
                f"{path}/model_index.json lists no {component}; a Stable Diffusion pipeline needs one: {DOWNLOAD_HINT.format(folder=path)}"
            )
        if not sub.is_dir() or not any(next(sub.glob(pattern), None) for pattern in patterns):
            raise FileNotFoundError(
                f"{sub}/ is missing or has no {what}: the download of {path} is incomplete; " + DOWNLOAD_HINT.format(folder=path)
            )
    return index


def _require_transformers():
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            "Stable Diffusion needs the transformers package (CLIP tokenizer and text encoder): pip install 'diffprobe[sd]'"
        ) from error
    return transformers


class _ClipText:
    """The CLIP tokenizer + text encoder of a pipeline: prompts, and traced prompts for relevance."""

    def __init__(self, tokenizer, text_encoder: Any):  # a transformers text encoder (CLIPTextModel), untyped here
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_length = int(tokenizer.model_max_length)

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    def ids(self, text: str) -> torch.Tensor:
        """(1, L) ids, padded to the encoder's length L. A too-long prompt is an error, not a silent
        cut, since a cut prompt would drop words from the explanation."""
        length = len(self.tokenizer(text, truncation=False).input_ids)
        if length > self.max_length:
            raise ValueError(
                f"prompt {text!r} is {length} tokens (with start and end tokens) but the text encoder takes at most {self.max_length}; shorten the prompt"
            )
        ids = self.tokenizer(text, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt").input_ids
        return ids.to(self.device)

    def words(self, ids: list[int]) -> list[int]:
        """Positions strictly between the start token and the first end token (padding is end tokens too)."""
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        start = ids.index(bos) + 1 if bos in ids else 0
        end = ids.index(eos, start) if eos in ids[start:] else len(ids)
        return list(range(start, end))

    def encode(self, text: str) -> Prompt:
        """condition / uncondition (1, L, D): the last hidden state for ``text`` and for "" (SD's CFG null prompt)."""
        ids = self.ids(text)
        both = self.text_encoder(torch.cat([ids, self.ids("")]))[0]
        id_list = ids[0].tolist()
        return Prompt(
            text=text,
            condition=both[:1],
            uncondition=both[1:],
            tokens=self.tokenizer.convert_ids_to_tokens(id_list),
            words=self.words(id_list),
        )

    def trace(self, text: str) -> TracedText:
        """The condition (1, L, D) in the autograd graph and each layer's attention (1, heads, L, L) with retain_grad."""
        # The encoder's weights are frozen and ids are integers, so nothing would need a gradient:
        # the token embeddings are made a leaf that does, which puts every attention in the graph
        # without touching the weights (no .grad piles up on them).
        embedding = self.text_encoder.get_input_embeddings()
        handle = embedding.register_forward_hook(lambda module, inputs, output: output.detach().requires_grad_(True))
        try:
            with torch.enable_grad():
                output = self.text_encoder(self.ids(text), output_attentions=True)
        finally:
            handle.remove()
        attentions = list(output.attentions or ())
        layers = self.text_encoder.config.num_hidden_layers
        if len(attentions) != layers or any(a is None for a in attentions):
            raise RuntimeError(
                f"the text encoder returned {len(attentions)} attention maps for {layers} layers: its attention implementation "
                f"({getattr(self.text_encoder.config, '_attn_implementation', '?')}) does not return probabilities; load it with attn_implementation='eager'"
            )
        for attention in attentions:
            attention.retain_grad()
        return TracedText(condition=output[0], attentions=attentions)


def _vae_decoder(vae: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    def decode(latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) -> images (B, 3, 8h, 8w) (2h for the tiny test VAE), about [-1, 1]."""
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample

    return decode


def load_stable_diffusion(
    folder: str | Path, guidance_scale: float = 7.5, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> ExplainModel:
    """Load a local Stable Diffusion pipeline folder (e.g. CompVis/stable-diffusion-v1-4) as an
    ``ExplainModel`` of kind "stable-diffusion", float32 on ``device``, all weights frozen.
    ``guidance_scale``: classifier-free guidance w (the paper's 7.5; 1 turns CFG off). ``dtype``:
    the weights' dtype (float16 / bfloat16 on a GPU); the tools score in float32 either way."""
    path = Path(folder).expanduser()
    index = check_stable_diffusion_folder(path)
    transformers = _require_transformers()
    from diffusers import StableDiffusionPipeline

    # Eager attention from the start: only it returns attention probabilities (see module docstring).
    encoder_class = getattr(transformers, index["text_encoder"][1])
    text_encoder = encoder_class.from_pretrained(path, subfolder="text_encoder", attn_implementation="eager", local_files_only=True)
    pipe = StableDiffusionPipeline.from_pretrained(
        path, text_encoder=text_encoder, safety_checker=None, feature_extractor=None, requires_safety_checker=False, local_files_only=True
    )
    if pipe.unet.config.in_channels != pipe.vae.config.latent_channels:
        raise ValueError(
            f"{path}'s UNet takes {pipe.unet.config.in_channels} channels but its VAE gives {pipe.vae.config.latent_channels}-channel latents "
            "(an inpainting or image-conditioned model?); use a text-to-image Stable Diffusion pipeline"
        )
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    text = _ClipText(pipe.tokenizer, pipe.text_encoder)
    scheduler_config = dict(pipe.scheduler.config)
    # SD v1's PNDM config may lack clip_sample, and DDIM's default (True) would clip latents to [-1, 1].
    scheduler_config.setdefault("clip_sample", False)
    return ExplainModel(
        unet=pipe.unet,
        scheduler_config=scheduler_config,
        guidance_scale=guidance_scale,
        encode_prompt_fn=text.encode,
        decode_fn=_vae_decoder(pipe.vae),
        trace_text_fn=text.trace,
        kind="stable-diffusion",
        extras={"text_encoder": pipe.text_encoder, "vae": pipe.vae, "tokenizer": pipe.tokenizer, "folder": path},
    )
