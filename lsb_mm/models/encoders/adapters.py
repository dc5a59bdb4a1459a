"""Modality adapters: backbone features -> :class:`~lsb_mm.models.stream.TokenStream`."""
from __future__ import annotations

from typing import Dict

import torch

from lsb_mm.models.stream import TokenStream
from lsb_mm.models.encoders.base import Backbone, ImageFeatures, TextFeatures
from lsb_mm.models.encoders.visual_words import VisualWords

__all__ = ["text_stream", "image_stream", "text_stream_of", "image_stream_of"]


def text_stream(backbone: Backbone, batch: Dict[str, torch.Tensor]) -> TokenStream:
    """Tokenizer ids over the text vocabulary; vocabulary embeddings are the token embeddings."""
    return text_stream_of(backbone, backbone.text_features(batch))


def image_stream(backbone: Backbone, codebook: VisualWords, pixels: torch.Tensor) -> TokenStream:
    """Visual words over the codebook; vocabulary embeddings are the centroids. No special ids."""
    return image_stream_of(backbone, codebook, backbone.image_features(pixels))


def text_stream_of(backbone: Backbone, f: TextFeatures) -> TokenStream:
    """The token stream of text features already computed (e.g. read from a tower cache)."""
    specials = torch.tensor(backbone.text_special_ids(), dtype=torch.long, device=f.ids.device)
    return TokenStream(ids=f.ids, mask=f.mask, hidden=f.hidden, pooled=f.pooled, summary=f.summary,
                       vocab_size=backbone.text_vocab_size, vocab_embeddings=backbone.text_vocab_embeddings(),
                       vocab_logits=backbone.text_vocab_logits(), special_ids=specials, modality="text")


def image_stream_of(backbone: Backbone, codebook: VisualWords, f: ImageFeatures) -> TokenStream:
    """The token stream of image features already computed: each patch / cell's nearest visual word."""
    ids = codebook.assign(f.hidden)
    mask = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    return TokenStream(ids=ids, mask=mask, hidden=f.hidden, pooled=f.pooled, summary=f.summary,
                       vocab_size=codebook.vocab_size, vocab_embeddings=codebook.centroids, modality="image")
