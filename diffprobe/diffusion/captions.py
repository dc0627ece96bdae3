"""Captions -> token embeddings for concept-conditional UNets, without an external text encoder.

A caption is split into words; each word is a token of a fixed vocabulary (ConceptShapes' concept
values and template words, or a data set's label names). Tokens keep their names, so later tools
can map cross-attention to words: ``encoder.tokenizer.decode(ids)``.

``CaptionEncoder`` is a diffusers ``ModelMixin``, so it saves and loads with ``save_pretrained`` /
``from_pretrained`` next to the UNet in an exported folder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

PAD = "<pad>"
UNKNOWN = "<unk>"


class CaptionTokenizer:
    """Word-level tokenizer over a fixed vocabulary; id 0 is padding, id 1 an unknown word."""

    def __init__(self, vocabulary: Sequence[str], max_tokens: int):
        words = [w for w in vocabulary if w not in (PAD, UNKNOWN)]
        if len(set(words)) != len(words):
            raise ValueError("vocabulary has repeated words; give each word once")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        self.words: list[str] = [PAD, UNKNOWN, *words]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.max_tokens = max_tokens

    def __len__(self) -> int:
        return len(self.words)

    def split(self, caption: str) -> list[str]:
        return caption.lower().replace(",", " ").split()

    def check_words(self, captions: Sequence[str]) -> None:
        """ValueError naming the words of user-given captions that are not in the vocabulary: they
        would all become one <unk> token, an image of nothing the model learned to read."""
        unknown = list(dict.fromkeys(w for caption in captions for w in self.split(caption) if w not in self.index))
        if unknown:
            raise ValueError(f"words {unknown} are not in this model's caption vocabulary; use its words: {self.words[2:]}")

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> ids (B, max_tokens), padded with 0. Too long a caption is an error, not a
        silent cut, since a cut caption would drop concepts."""
        ids = torch.zeros(len(captions), self.max_tokens, dtype=torch.long)
        for row, caption in enumerate(captions):
            words = self.split(caption)
            if len(words) > self.max_tokens:
                raise ValueError(
                    f"caption {caption!r} has {len(words)} words but max_caption_tokens is {self.max_tokens}; "
                    "raise --model.max_caption_tokens"
                )
            ids[row, : len(words)] = torch.tensor([self.index.get(w, 1) for w in words], dtype=torch.long)
        return ids

    def decode(self, ids: torch.Tensor) -> list[list[str]]:
        """Ids (B, L) -> the words of each row, padding dropped."""
        return [[self.words[i] for i in row.tolist() if i != 0] for row in ids]


# diffusers' two bases disagree on config_name's type (ModelMixin: str, ConfigMixin: None), as in every
# diffusers model class; ModelMixin's, first in the MRO, is the one in effect.
class CaptionEncoder(ModelMixin, ConfigMixin):  # type: ignore[misc]
    """Learned token + position embeddings: ids (B, L) -> encoder_hidden_states (B, L, dim).

    Position embeddings matter: ConceptShapes' object colour and background colour share words
    ("red"), only their place in the caption tells them apart.
    """

    @register_to_config
    def __init__(self, vocabulary: list[str], max_tokens: int = 16, embedding_dim: int = 64):
        super().__init__()
        self.tokenizer = CaptionTokenizer(vocabulary, max_tokens)
        self.token_embedding = nn.Embedding(len(self.tokenizer), embedding_dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_tokens, embedding_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)
        self.norm = nn.LayerNorm(embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.token_embedding(ids) + self.position_embedding[: ids.shape[1]])

    def encode(self, captions: Sequence[str], drop_probability: float = 0.0, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Captions -> (B, L, dim) on this encoder's device; each caption replaced by the empty one
        with ``drop_probability`` (classifier-free guidance training), or where ``keep`` (B,) bool
        is False when the caller drew that choice itself."""
        device = self.position_embedding.device
        ids = self.tokenizer.encode(captions).to(device)
        if keep is None and drop_probability > 0:
            keep = torch.rand(ids.shape[0], device=device) >= drop_probability
        if keep is not None:
            keep = keep.view(-1, 1).to(device)
            ids = ids * keep
        return self(ids)

    def unconditional(self, batch_size: int) -> torch.Tensor:
        """The empty caption (all padding): the null condition of classifier-free guidance."""
        ids = torch.zeros(batch_size, self.tokenizer.max_tokens, dtype=torch.long, device=self.position_embedding.device)
        return self(ids)
