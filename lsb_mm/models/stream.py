"""The common token stream: what every modality adapter produces and every head reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["TokenStream"]


@dataclass
class TokenStream:
    """One batch of inputs of any modality, seen as a sequence of discrete tokens.

    Text adapters fill ``ids`` with tokenizer ids; image adapters with *visual words*
    (the nearest codebook centroid of each patch or spatial cell).

    Attributes:
        ids: ``[B, L]`` token ids in ``[0, vocab_size)``.
        mask: ``[B, L]`` bool, True where a position holds a real token (not padding).
        hidden: ``[B, L, H]`` hidden state of each position.
        pooled: ``[B, d]`` the backbone's own (un-normalised) embedding.
        summary: ``[B, H]`` one hidden state summarising the input (CLS / EOT token, or the
            mean of patch cells); CLR projects it onto the vocabulary.
        vocab_size: ``V``.
        vocab_embeddings: ``[V, H]`` token embeddings (text) or codebook centroids (images).
        vocab_logits: optional callable ``summary [B, H] -> logits [B, V]``: the checkpoint's
            own MLM / MIM head, used by CLR in place of the tied projection.
        special_ids: 1-D tensor of ids that are not content (CLS/BOS, EOS, PAD, UNK).
        modality: ``"text"`` or ``"image"`` (informational; heads never branch on it).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    hidden: torch.Tensor
    pooled: torch.Tensor
    summary: torch.Tensor
    vocab_size: int
    vocab_embeddings: Optional[torch.Tensor] = None
    vocab_logits: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    special_ids: Optional[torch.Tensor] = None
    modality: str = "text"

    def __post_init__(self) -> None:
        b, l = self.ids.shape
        if self.mask.shape != (b, l):
            raise ValueError(f"TokenStream.mask has shape {tuple(self.mask.shape)}, expected {(b, l)}")
        if self.hidden.shape[:2] != (b, l):
            raise ValueError(f"TokenStream.hidden has shape {tuple(self.hidden.shape)}, expected ({b}, {l}, H)")
        if self.pooled.shape[0] != b or self.summary.shape[0] != b:
            raise ValueError("TokenStream.pooled / summary must have the batch size of ids")
        if self.vocab_embeddings is not None and self.vocab_embeddings.shape[0] != self.vocab_size:
            raise ValueError(
                f"TokenStream.vocab_embeddings has {self.vocab_embeddings.shape[0]} rows, expected vocab_size={self.vocab_size}"
            )
        if self.mask.dtype != torch.bool:
            self.mask = self.mask.bool()
        if self.special_ids is None:
            self.special_ids = torch.empty(0, dtype=torch.long, device=self.ids.device)

    @property
    def content_mask(self) -> torch.Tensor:
        """``[B, L]`` True at real, non-special tokens."""
        m = self.mask
        if self.special_ids is not None and self.special_ids.numel():
            m = m & ~torch.isin(self.ids, self.special_ids.to(self.ids.device))
        return m
