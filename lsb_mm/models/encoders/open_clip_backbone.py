"""open_clip backbones: CLIP-style text and ViT image towers.

Names follow open_clip: a registered config (``ViT-B-32``, ``lsb-tiny-test``) with an optional
``pretrained=`` tag (downloaded by open_clip into the standard cache, or served from it offline) or
weights file, ``hf-hub:<org>/<name>`` (a hub repository with ``open_clip_config.json`` and its
weights), or ``local-dir:/path`` holding ``open_clip_config.json``.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Callable, Dict, List, Optional

import torch

from lsb_mm.errors import ModelLoadError
from lsb_mm.models.encoders.base import Backbone, ImageFeatures, TextFeatures, register_backbone

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "model_configs")  # lsb_mm/models/model_configs
_registered = False


def register_lsb_configs() -> None:
    """Register lsb-mm's own open_clip model configs (e.g. ``lsb-tiny-test``) once."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


class _quiet_open_clip:
    """Drop open_clip's root-logger warnings about random init, which we ask for on purpose."""

    # the last: a hub miss, which lsb-mm reports itself in one line
    _noise = ("No pretrained weights loaded", "Local config loaded, but no CLIP weights", "Failed to download weights")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._noise)

    def __enter__(self):
        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeFilter(self)


def _text_module(model):
    """The module that owns token_embedding / ln_final: the CLIP itself or its ``.text``."""
    if hasattr(model, "token_embedding") and hasattr(model, "ln_final"):
        return model
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "token_embedding") and hasattr(text, "ln_final"):
        return text
    return None


@register_backbone("open_clip")
class OpenClipBackbone(Backbone):
    def __init__(self, model, name: str, model_cfg: Dict[str, Any], preprocess_cfg: Dict[str, Any],
                 tokenizer_source: Optional[str] = None):
        super().__init__()
        import open_clip

        self.model = model.eval()
        self.name = name
        self.model_cfg = model_cfg
        self.preprocess_cfg = preprocess_cfg
        self.embed_dim = int(model_cfg.get("embed_dim"))
        tm = _text_module(model)
        self.has_text = tm is not None
        if self.has_text:
            if getattr(tm, "cls_emb", None) is not None:
                raise ModelLoadError(f"open_clip model {name!r}: text towers with an appended CLS token are not supported")
            self.text_hidden_dim = int(tm.ln_final.normalized_shape[0])
            self.text_vocab_size = int(tm.token_embedding.num_embeddings)
            ctx = int(model_cfg.get("text_cfg", {}).get("context_length", 77))
            try:
                self.tokenizer = open_clip.get_tokenizer(tokenizer_source or name, context_length=ctx)
            except Exception as exc:  # an HF tokenizer that is not available offline
                raise ModelLoadError(f"open_clip model {name!r}: cannot build its tokenizer offline: {exc}") from exc
            inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps an HF one
            if inner is not None and hasattr(inner, "all_special_ids"):
                self._pad_id = int(inner.pad_token_id or 0)
                self._specials = sorted({self._pad_id, *map(int, inner.all_special_ids)})
            else:
                self._pad_id = 0
                self._specials = sorted({0, *[int(t) for t in (getattr(self.tokenizer, "sot_token_id", None),
                                                                getattr(self.tokenizer, "eot_token_id", None)) if t is not None]})
        elif getattr(model, "text", None) is not None:
            raise ModelLoadError(f"open_clip model {name!r} has a Hugging Face text tower; load it with 'hf:' instead")
        visual = getattr(model, "visual", None)
        self.has_image = visual is not None and all(hasattr(visual, a) for a in ("_embeds", "transformer", "_pool"))
        if visual is not None and not self.has_image:
            raise ModelLoadError(
                f"open_clip model {name!r}: only ViT image towers are supported through open_clip; use 'timm:' for CNNs")
        if self.has_image:
            self.image_hidden_dim = int(visual.ln_post.normalized_shape[0])

    # -- construction --------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, pretrained: Optional[str] = None, **options: Any) -> "OpenClipBackbone":
        import open_clip

        from lsb_mm.models.encoders.hub import hub_miss, raise_hub_miss

        register_lsb_configs()
        if name.startswith("hf-hub:"):
            repo = name[len("hf-hub:"):]
            if pretrained:
                raise ModelLoadError(f"open_clip:{name}: a hub repository brings its own weights; 'pretrained' does not apply")
            try:
                from open_clip.factory import _get_hf_config

                model_cfg = _get_hf_config(repo).get("model_cfg")
            except Exception as exc:  # noqa: BLE001 -- open_clip wraps the hub's errors in FileNotFoundError
                if hub_miss(exc):
                    raise_hub_miss(f"open_clip:{name}", repo, exc)
                raise ModelLoadError(f"open_clip:{name}: cannot read open_clip_config.json from {repo!r}: {exc}") from exc
            if not isinstance(model_cfg, dict):
                raise ModelLoadError(f"open_clip:{name}: open_clip_config.json has no 'model_cfg'")
        elif name.startswith("local-dir:"):
            folder = name[len("local-dir:"):]
            cfg_path = os.path.join(folder, "open_clip_config.json")
            if not os.path.isfile(cfg_path):
                raise ModelLoadError(f"open_clip:{name}: {cfg_path} not found")
            with open(cfg_path, encoding="utf-8") as f:
                model_cfg = json.load(f).get("model_cfg")
            if not isinstance(model_cfg, dict):
                raise ModelLoadError(f"{cfg_path}: missing 'model_cfg'")
        else:
            model_cfg = open_clip.get_model_config(name)
            if model_cfg is None:
                raise ModelLoadError(f"unknown open_clip model {name!r}; see lsb_mm.list_models('open_clip')")
        if pretrained and not os.path.isfile(pretrained) and not name.startswith(("local-dir:", "hf-hub:")):
            tags = open_clip.list_pretrained_tags_by_model(name)
            if pretrained not in tags:
                raise ModelLoadError(f"open_clip:{name}: pretrained={pretrained!r} is neither a file nor a known tag {tags}")
        try:
            with _quiet_open_clip():
                model = open_clip.create_model(name, pretrained=pretrained, **options)
        except (RuntimeError, OSError, ValueError) as exc:
            if hub_miss(exc):
                cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
                raise_hub_miss(f"open_clip:{name} (pretrained={pretrained!r})", (cfg.get("hf_hub") or name).strip("/"), exc)
            raise ModelLoadError(f"open_clip could not build {name!r} (pretrained={pretrained!r}): {exc}") from exc
        from open_clip.model import get_model_preprocess_cfg

        return cls(model, name, model_cfg, dict(get_model_preprocess_cfg(model)))

    def spec(self) -> Dict[str, Any]:
        return {"family": "open_clip", "name": self.name}

    def save_assets(self, folder: str) -> None:
        with open(os.path.join(folder, "open_clip_config.json"), "w", encoding="utf-8") as f:
            json.dump({"model_cfg": self.model_cfg, "preprocess_cfg": _jsonable(self.preprocess_cfg)}, f, indent=2)

    @classmethod
    def from_saved(cls, spec: Dict[str, Any], folder: str) -> "OpenClipBackbone":
        import open_clip

        cfg_path = os.path.join(folder, "open_clip_config.json")
        if not os.path.isfile(cfg_path):
            raise ModelLoadError(f"{cfg_path} is missing")
        with open(cfg_path, encoding="utf-8") as f:
            saved = json.load(f)
        with _quiet_open_clip():
            model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
        return cls(model, spec.get("name", "saved"), saved["model_cfg"], saved.get("preprocess_cfg", {}),
                   tokenizer_source=f"local-dir:{folder}")

    def tower_of(self, name: str) -> Optional[str]:
        if name.startswith("model.visual."):
            return "image"
        if name in ("model.logit_scale", "model.logit_bias"):
            return None
        return "text"

    # -- text ---------------------------------------------------------------------------
    def tokenize(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        ids = self.tokenizer(texts)
        return {"input_ids": ids}

    def text_special_ids(self) -> List[int]:
        return list(self._specials)

    def text_token_names(self, ids: List[int]) -> List[str]:
        inner = getattr(self.tokenizer, "tokenizer", None)
        if inner is not None and hasattr(inner, "convert_ids_to_tokens"):
            return list(inner.convert_ids_to_tokens([int(i) for i in ids]))
        decoder = getattr(self.tokenizer, "decoder", {})
        return [decoder.get(int(i), f"#{int(i)}").replace("</w>", "") for i in ids]

    def text_vocab_embeddings(self) -> torch.Tensor:
        return _text_module(self.model).token_embedding.weight

    def text_features(self, batch: Dict[str, torch.Tensor]) -> TextFeatures:
        from open_clip.transformer import text_global_pool

        ids = batch["input_ids"]
        tm = _text_module(self.model)
        captured: Dict[str, torch.Tensor] = {}
        me = threading.get_ident()

        def grab(module, inputs, output) -> None:  # hooks fire in every thread's forward: keep this thread's
            if threading.get_ident() == me:
                captured["hidden"] = output

        handle = tm.ln_final.register_forward_hook(grab)
        try:
            pooled = self.model.encode_text(ids)
        finally:
            handle.remove()
        hidden = captured["hidden"]
        pool_type = getattr(tm, "text_pool_type", getattr(tm, "pool_type", "argmax"))
        eos = getattr(tm, "text_eos_id", getattr(tm, "eos_id", None))
        summary = text_global_pool(hidden, ids, pool_type, eos_token_id=eos) if pool_type != "none" else hidden.mean(1)
        return TextFeatures(ids=ids, mask=ids != self._pad_id, hidden=hidden, pooled=pooled, summary=summary)

    # -- image --------------------------------------------------------------------------
    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        keys = set(PreprocessCfg.__dataclass_fields__)
        cfg = PreprocessCfg(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in self.preprocess_cfg.items() if k in keys})
        return image_transform_v2(cfg, is_train=False)

    def image_features(self, pixels: torch.Tensor) -> ImageFeatures:
        visual = self.model.visual
        x = visual._embeds(pixels)
        x = visual.transformer(x)
        pooled_hidden, tokens = visual._pool(x)
        pooled = pooled_hidden @ visual.proj if visual.proj is not None else pooled_hidden
        return ImageFeatures(hidden=tokens, pooled=pooled, summary=pooled_hidden)


def _jsonable(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
