"""A tiny random Stable Diffusion folder, built from configs alone (no download, a second on CPU).

``write_tiny_stable_diffusion`` writes what ``huggingface-cli download CompVis/stable-diffusion-v1-4``
gives (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), with SD v1's
architecture types and noise schedule at toy sizes and random weights:

- ``UNet2DConditionModel``: 4 latent channels, one cross-attention level, cross_attention_dim 32;
- ``AutoencoderKL``: one downsampling, so images are 2x the latent size;
- ``CLIPTextModel``: 2 layers, 4 heads, width 32, 16 positions;
- ``CLIPTokenizer``: a byte-level BPE whose vocab.json / merges.txt are written here so that every
  word of ``words`` is ONE token ``word</w>`` (tests can then name the token of each word);
- ``PNDMScheduler`` with SD v1's config (scaled_linear 0.00085..0.012, steps_offset 1).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
WORDS = ("a", "red", "cat", "on", "the", "mat", "blue", "dog")
MAX_TOKENS = 16  # CLIP's 77 positions cut to 16: the tokenizer and the text encoder must agree
WIDTH = 32  # text encoder width = UNet cross_attention_dim


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level BPE's map of the 256 bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in codes]))


def word_vocabulary(words: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary layout: the 256 byte characters, their ``</w>`` forms, the merge results,
    then the two specials. Merges chain left to right (c a -> ca, ca t</w> -> cat</w>) so a word
    becomes the single token ``word</w>``."""
    characters = list(bytes_to_unicode().values())
    tokens = characters + [c + "</w>" for c in characters]
    merges: list[str] = []
    for word in words:
        if not word.isascii() or not word.isalpha() or word != word.lower():
            raise ValueError(f"tiny SD words must be lowercase ASCII letters (one BPE token each), got {word!r}")
        prefix = word[0]
        for index, character in enumerate(word[1:], start=1):
            piece = character + ("</w>" if index == len(word) - 1 else "")
            merge = f"{prefix} {piece}"
            prefix += piece
            if merge not in merges:
                merges.append(merge)
                tokens.append(prefix)
    tokens += [BOS, EOS]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}, merges


def write_tokenizer(folder: Path, words: Sequence[str]) -> CLIPTokenizer:
    """vocab.json + merges.txt in ``folder``, loaded back as a CLIPTokenizer; checks each word is one token."""
    vocab, merges = word_vocabulary(words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_TOKENS)
    for word in words:
        tokens = tokenizer.tokenize(word)
        # Chained merges can lose to another word's merge (e.g. "at" vs "mat"); fail here, not in a test.
        if tokens != [word + "</w>"]:
            raise ValueError(f"tiny SD tokenizer splits {word!r} into {tokens}; choose words whose merges do not overlap")
    return tokenizer


def write_tiny_stable_diffusion(folder: str | Path, words: Sequence[str] = WORDS, latent_size: int = 8, seed: int = 0) -> Path:
    """Write a tiny random Stable Diffusion pipeline to ``folder`` and return it. Latents are
    (4, latent_size, latent_size), images (3, 2 latent_size, 2 latent_size). Same seed, same weights."""
    folder = Path(folder)
    tokenizer = write_tokenizer(folder / "tokenizer", words)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=WIDTH,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        sample_size=2 * latent_size,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=WIDTH,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # SD v1.4's scheduler_config.json (PNDM, no clip_sample key: the loader must not clip latents).
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder
