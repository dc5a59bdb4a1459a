"""Backbones (open_clip, timm, Hugging Face) and the modality adapters that make token streams."""
from lsb_mm.models.encoders.base import BACKBONES, Backbone, ImageFeatures, TextFeatures, register_backbone
from lsb_mm.models.encoders import dual_backbone, hf_backbone, open_clip_backbone, timm_backbone  # noqa: F401  (register families)
from lsb_mm.models.encoders.adapters import image_stream, text_stream
from lsb_mm.models.encoders.visual_words import VisualWords

__all__ = ["BACKBONES", "Backbone", "ImageFeatures", "TextFeatures", "register_backbone",
           "image_stream", "text_stream", "VisualWords"]
