"""A CLIP-style dual encoder composed of any text tower and any image tower (LiT-style).

``create_model("dual:<text name>|<image name>", embed_dim=256, text_options={...}, image_options={...})``,
e.g. ``dual:hf:/path/all-MiniLM-L6-v2|timm:tf_efficientnet_lite0`` with
``image_options={"weights": <EfficientNet-Lite0 file>}``. Each tower keeps its own token stream;
two new linear projections map the towers' embeddings into one shared space of ``embed_dim``.
The projections are *adapters*: the trainer trains them whenever their tower is used, also with
``--train heads`` (towers locked, as in LiT).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from lsb_mm.errors import ModelLoadError
from lsb_mm.models.encoders.base import BACKBONES, Backbone, ImageFeatures, TextFeatures, register_backbone

__all__ = ["DualBackbone"]


def _split(ident: str):
    if "|" not in ident:
        raise ModelLoadError(f"dual:{ident}: expected 'dual:<text encoder>|<image encoder>'")
    text, image = ident.split("|", 1)
    out = []
    for part in (text, image):
        family, sep, name = part.partition(":")
        if not sep or family not in BACKBONES or family == "dual":
            raise ModelLoadError(f"dual:{ident}: {part!r} is not an encoder name (open_clip:, timm:, hf:)")
        out.append((family, name))
    return out


@register_backbone("dual")
class DualBackbone(Backbone):
    has_text = True
    has_image = True

    def __init__(self, text: Backbone, image: Backbone, embed_dim: int, name: str):
        super().__init__()
        if not text.has_text or not image.has_image:
            raise ModelLoadError(f"dual:{name}: the first encoder needs a text tower and the second an image tower")
        self.text, self.image, self.name = text, image, name
        self.embed_dim = int(embed_dim)
        self.text_proj = nn.Linear(text.embed_dim, self.embed_dim, bias=False)
        self.image_proj = nn.Linear(image.embed_dim, self.embed_dim, bias=False)
        self.text_hidden_dim, self.text_vocab_size = text.text_hidden_dim, text.text_vocab_size
        self.image_hidden_dim = image.image_hidden_dim

    @classmethod
    def create(cls, name: str, embed_dim: int = 256, text_options: Optional[Dict[str, Any]] = None,
               image_options: Optional[Dict[str, Any]] = None) -> "DualBackbone":
        (tf, tn), (imf, imn) = _split(name)
        text = BACKBONES[tf].create(tn, **(text_options or {}))
        image = BACKBONES[imf].create(imn, **(image_options or {}))
        return cls(text, image, embed_dim, name)

    def spec(self) -> Dict[str, Any]:
        return {"family": "dual", "name": self.name, "embed_dim": self.embed_dim,
                "text": self.text.spec(), "image": self.image.spec()}

    def save_assets(self, folder: str) -> None:
        for sub, tower in (("text", self.text), ("image", self.image)):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
            tower.save_assets(os.path.join(folder, sub))

    @classmethod
    def from_saved(cls, spec: Dict[str, Any], folder: str) -> "DualBackbone":
        towers = []
        for sub in ("text", "image"):
            s = spec[sub]
            if s.get("family") not in BACKBONES:
                raise ModelLoadError(f"dual backbone: {sub} tower family {s.get('family')!r} unknown")
            towers.append(BACKBONES[s["family"]].from_saved(s, os.path.join(folder, sub)))
        return cls(towers[0], towers[1], spec["embed_dim"], spec.get("name", "dual"))

    def tower_of(self, name: str) -> Optional[str]:
        if name.startswith(("text.", "text_proj.")):
            return "text" if name.startswith("text_proj.") or self.text.tower_of(name[5:]) == "text" else None
        if name.startswith(("image.", "image_proj.")):
            return "image" if name.startswith("image_proj.") or self.image.tower_of(name[6:]) == "image" else None
        return None

    def adapter_prefixes(self) -> tuple:
        return ("text_proj.", "image_proj.")

    def image_tower(self) -> Backbone:
        return self.image

    def text_tower(self) -> Backbone:
        return self.text

    def finish_text(self, f: TextFeatures) -> TextFeatures:
        return TextFeatures(ids=f.ids, mask=f.mask, hidden=f.hidden, pooled=self.text_proj(f.pooled), summary=f.summary)

    def finish_image(self, f: ImageFeatures) -> ImageFeatures:
        return ImageFeatures(hidden=f.hidden, pooled=self.image_proj(f.pooled), summary=f.summary)

    # -- text --------------------------------------------------------------------------
    def tokenize(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        return self.text.tokenize(texts)

    def text_special_ids(self) -> List[int]:
        return self.text.text_special_ids()

    def text_token_names(self, ids: List[int]) -> List[str]:
        return self.text.text_token_names(ids)

    def text_vocab_embeddings(self) -> torch.Tensor:
        return self.text.text_vocab_embeddings()

    def text_vocab_logits(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        return self.text.text_vocab_logits()

    def text_features(self, batch: Dict[str, torch.Tensor]) -> TextFeatures:
        return self.finish_text(self.text.text_features(batch))

    # -- image ---------------------------------------------------------------------------
    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        return self.image.image_transform()

    def image_features(self, pixels: torch.Tensor) -> ImageFeatures:
        return self.finish_image(self.image.image_features(pixels))
