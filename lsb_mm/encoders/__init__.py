"""Backbones (open_clip, timm, Hugging Face) and the modality adapters that make token streams."""
from .base import BACKBONES, Backbone, ImageFeatures, TextFeatures, register_backbone
from . import dual_backbone, hf_backbone, open_clip_backbone, timm_backbone  # noqa: F401  (register families)
from .adapters import image_stream, text_stream
from .visual_words import VisualWords
from .feature_cache import ImageFeatureCache

__all__ = ["BACKBONES", "Backbone", "ImageFeatures", "TextFeatures", "register_backbone",
           "image_stream", "text_stream", "VisualWords", "ImageFeatureCache"]
