"""Backbone interface: what a wrapped open_clip / timm / Hugging Face model must provide.

A backbone exposes raw features per modality; the adapters in :mod:`lsb_mm.models.encoders.adapters`
turn them into a :class:`~lsb_mm.models.stream.TokenStream`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

__all__ = ["Backbone", "TextFeatures", "ImageFeatures", "BACKBONES", "register_backbone"]

BACKBONES: Dict[str, type] = {}


def register_backbone(family: str):
    """Class decorator: make a backbone family available to ``create_model("family:...")``."""

    def deco(cls):
        cls.family = family
        BACKBONES[family] = cls
        return cls

    return deco


@dataclass
class TextFeatures:
    ids: torch.Tensor  # [B, L]
    mask: torch.Tensor  # [B, L] bool
    hidden: torch.Tensor  # [B, L, H]
    pooled: torch.Tensor  # [B, d]
    summary: torch.Tensor  # [B, H]


@dataclass
class ImageFeatures:
    hidden: torch.Tensor  # [B, N, H] patch tokens or spatial cells
    pooled: torch.Tensor  # [B, d]
    summary: torch.Tensor  # [B, H]


class Backbone(nn.Module):
    """A dense encoder with a text tower, an image tower, or both.

    Subclasses set ``has_text`` / ``has_image``, the dimensions, and implement the methods
    of the towers they have. ``spec()`` returns a JSON-able description from which
    ``from_saved(spec, folder)`` rebuilds the architecture (weights come separately).
    """

    family = "base"
    has_text = False
    has_image = False
    embed_dim: int = 0
    text_hidden_dim: int = 0
    image_hidden_dim: int = 0
    text_vocab_size: int = 0

    # -- text tower --------------------------------------------------------------------
    def tokenize(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no text tower")

    def text_features(self, batch: Dict[str, torch.Tensor]) -> TextFeatures:
        raise NotImplementedError(f"{type(self).__name__} has no text tower")

    def text_special_ids(self) -> List[int]:
        return []

    def text_token_names(self, ids: List[int]) -> List[str]:
        """Readable names of token ids (for explanations); ``#<id>`` where the tokenizer cannot say."""
        return [f"#{i}" for i in ids]

    def text_vocab_embeddings(self) -> torch.Tensor:
        raise NotImplementedError

    def text_vocab_logits(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """The checkpoint's MLM head as ``summary -> logits``, or None."""
        return None

    # -- image tower -------------------------------------------------------------------
    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no image tower")

    def image_features(self, pixels: torch.Tensor) -> ImageFeatures:
        raise NotImplementedError(f"{type(self).__name__} has no image tower")

    # -- training ----------------------------------------------------------------------
    def tower_of(self, name: str) -> Optional[str]:
        """The tower (``"text"`` / ``"image"``) that owns parameter ``name`` (relative to this
        backbone), or None for parameters no embedding uses (e.g. CLIP's logit scale)."""
        if self.has_text and not self.has_image:
            return "text"
        if self.has_image and not self.has_text:
            return "image"
        raise NotImplementedError(f"{type(self).__name__} must say which tower owns {name}")

    def image_tower(self) -> "Backbone":
        """The module whose ``image_features`` are the frozen part of the image side (a feature
        cache wraps it); a composite backbone returns its inner image tower."""
        return self

    def text_tower(self) -> "Backbone":
        """The module whose ``text_features`` are the frozen part of the text side (a tower cache
        stores them); a composite backbone returns its inner text tower."""
        return self

    def finish_text(self, f: TextFeatures) -> TextFeatures:
        """What this backbone adds above :meth:`text_tower` (a composite's projection), so that
        ``text_features(b) == finish_text(text_tower().text_features(b))``; identity here."""
        return f

    def finish_image(self, f: ImageFeatures) -> ImageFeatures:
        """The image side of :meth:`finish_text`: ``image_features(x) == finish_image(image_tower().image_features(x))``."""
        return f

    def adapter_prefixes(self) -> tuple:
        """Parameter-name prefixes of new layers (e.g. projections) that train like heads."""
        return ()

    # -- persistence -------------------------------------------------------------------
    def spec(self) -> Dict[str, Any]:
        raise NotImplementedError

    def save_assets(self, folder: str) -> None:
        """Write the files ``from_saved`` needs besides weights (configs, tokenizer)."""

    @classmethod
    def create(cls, name: str, **options: Any) -> "Backbone":
        raise NotImplementedError

    @classmethod
    def from_saved(cls, spec: Dict[str, Any], folder: str) -> "Backbone":
        raise NotImplementedError

    def describe(self) -> str:
        towers = "+".join(t for t, ok in (("text", self.has_text), ("image", self.has_image)) if ok)
        return f"{self.family} ({towers}, d={self.embed_dim})"
