"""Hugging Face encoders from a local folder (or the HF cache), three kinds, chosen by the config:

- ``text``: BERT / MiniLM / RoBERTa ... Pooling follows sentence-transformers when the folder is
  one (``1_Pooling/config.json``, ``sentence_bert_config.json``), else ``cls``. A masked-LM head
  in the checkpoint is kept and serves CLR; otherwise CLR uses the tied token embeddings.
- ``vision``: ViT / DeiT / BEiT / DINOv2 ... (``AutoModel`` with patch tokens); pooling ``cls``
  (default) or ``mean`` of the patch tokens.
- ``clip``: ``CLIPModel``, both towers with their projections (a cross-modal dual encoder).

Nothing is fetched: ``HF_HUB_OFFLINE=1`` is expected, and ``trust_remote_code`` stays off unless
asked for.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..errors import ModelLoadError
from .base import Backbone, ImageFeatures, TextFeatures, register_backbone

POOLINGS = ("cls", "mean", "max")
VISION_TYPES = ("vit", "deit", "beit", "dinov2", "vit_msn", "vit_mae", "data2vec-vision", "dinov3_vit")


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return None


def sentence_transformers_settings(folder: str) -> Dict[str, Any]:
    """Pooling mode and max length declared by a sentence-transformers folder (empty if none)."""
    out: Dict[str, Any] = {}
    pool = _read_json(os.path.join(folder, "1_Pooling", "config.json"))
    if pool:
        for mode in POOLINGS:
            if pool.get(f"pooling_mode_{mode}_tokens") or (mode == "cls" and pool.get("pooling_mode_cls_token")):
                out["pooling"] = mode
                break
    sb = _read_json(os.path.join(folder, "sentence_bert_config.json"))
    if sb and sb.get("max_seq_length"):
        out["max_length"] = int(sb["max_seq_length"])
    return out


def _check_pooling(name: str, pooling: str, allowed=POOLINGS) -> None:
    if pooling not in allowed:
        raise ModelLoadError(f"hf:{name}: pooling must be one of {allowed}, got {pooling!r}")


def _drop_pooler(model: nn.Module) -> nn.Module:
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # BERT/ViT-style poolers are never used for embeddings; drop their weights
    return model


def _special_ids(tokenizer) -> List[int]:
    pad = tokenizer.pad_token_id
    return sorted({int(i) for i in tokenizer.all_special_ids} | ({int(pad)} if pad is not None else set()))


def _pixel_transform(processor) -> Callable[[Any], torch.Tensor]:
    def transform(img) -> torch.Tensor:
        return processor(images=img, return_tensors="pt")["pixel_values"][0]

    return transform


def _hf_kind(config) -> str:
    if config.model_type == "clip":
        return "clip"
    if config.model_type in VISION_TYPES:
        return "vision"
    return "text"


@register_backbone("hf")
class HFBackbone(Backbone):
    """Entry point of the ``hf:`` family: picks the text, vision or CLIP backbone from the config."""

    kind = "base"

    @classmethod
    def create(cls, name: str, trust_remote_code: bool = False, **options: Any) -> "HFBackbone":
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load Hugging Face model {name!r} offline (a local folder with config.json "
                                 f"is expected): {exc}") from exc
        sub = _KINDS[_hf_kind(config)]
        try:
            return sub.build(name, config, trust_remote_code=trust_remote_code, **options)
        except TypeError as exc:  # an option this kind does not take
            raise ModelLoadError(f"hf:{name} ({sub.kind} model): {exc}") from exc

    @classmethod
    def from_saved(cls, spec: Dict[str, Any], folder: str) -> "HFBackbone":
        kind = spec.get("kind", "text")
        if kind not in _KINDS:
            raise ModelLoadError(f"hf backbone kind {kind!r} unknown; expected one of {sorted(_KINDS)}")
        return _KINDS[kind].rebuild(spec, folder)

    def save_assets(self, folder: str) -> None:
        self.config_to_save.save_pretrained(folder)
        for asset in (getattr(self, "tokenizer", None), getattr(self, "processor", None)):
            if asset is not None:
                asset.save_pretrained(folder)


def _load_tokenizer(name: str, **kw):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, **kw)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"hf:{name}: no usable tokenizer files in the folder: {exc}") from exc


def _load_processor(name: str, config, **kw):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(name, **kw)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"hf:{name}: no image processor (preprocessor_config.json) in the folder: {exc}") from exc


class HFTextBackbone(HFBackbone):
    kind = "text"
    has_text = True

    def __init__(self, model: nn.Module, tokenizer, name: str, pooling: str, max_length: int,
                 mlm_head: Optional[nn.Module] = None, config=None):
        super().__init__()
        _check_pooling(name, pooling)
        self.config_to_save = config if config is not None else model.config
        self.model = _drop_pooler(model).eval()
        self.tokenizer = tokenizer
        self.name, self.pooling, self.max_length = name, pooling, int(max_length)
        self.mlm_head = mlm_head
        self.text_hidden_dim = int(model.config.hidden_size)
        self.embed_dim = self.text_hidden_dim
        self.text_vocab_size = int(model.get_input_embeddings().num_embeddings)
        self._specials = _special_ids(tokenizer)

    @classmethod
    def build(cls, name: str, config, pooling: str = "auto", max_length: Optional[int] = None, mlm_head: str = "auto",
              trust_remote_code: bool = False) -> "HFTextBackbone":
        from transformers import AutoModel, AutoModelForMaskedLM

        kw = {"trust_remote_code": trust_remote_code}
        tokenizer = _load_tokenizer(name, **kw)
        st = sentence_transformers_settings(name) if os.path.isdir(name) else {}
        if pooling == "auto":
            pooling = st.get("pooling", "cls")
        if max_length is None:
            max_length = st.get("max_length") or min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
        if mlm_head not in ("auto", "none"):
            raise ModelLoadError(f"hf:{name}: mlm_head must be 'auto' or 'none', got {mlm_head!r}")
        head = None
        if mlm_head == "auto" and any(a.endswith("ForMaskedLM") for a in (config.architectures or [])):
            model, head = _split_mlm(AutoModelForMaskedLM.from_pretrained(name, **kw))
        else:
            model = AutoModel.from_pretrained(name, **kw)
        return cls(model, tokenizer, name, pooling, max_length, head, config)

    def spec(self) -> Dict[str, Any]:
        return {"family": "hf", "kind": "text", "name": self.name, "pooling": self.pooling,
                "max_length": self.max_length, "mlm_head": self.mlm_head is not None}

    @classmethod
    def rebuild(cls, spec: Dict[str, Any], folder: str) -> "HFTextBackbone":
        from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        head = None
        if spec.get("mlm_head"):
            model, head = _split_mlm(AutoModelForMaskedLM.from_config(config))
        else:
            model = AutoModel.from_config(config)
        return cls(model, tokenizer, spec.get("name", folder), spec["pooling"], spec["max_length"], head, config)

    def tokenize(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"))

    def text_special_ids(self) -> List[int]:
        return list(self._specials)

    def text_vocab_embeddings(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    def text_vocab_logits(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        if self.mlm_head is None:
            return None
        head = self.mlm_head
        return lambda summary: head(summary.unsqueeze(1)).squeeze(1)

    def text_features(self, batch: Dict[str, torch.Tensor]) -> TextFeatures:
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].bool()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        else:
            pooled = hidden.masked_fill(~mask.unsqueeze(-1), torch.finfo(hidden.dtype).min).max(1).values
        return TextFeatures(ids=batch["input_ids"], mask=mask, hidden=hidden, pooled=pooled, summary=hidden[:, 0])


class HFVisionBackbone(HFBackbone):
    kind = "vision"
    has_image = True

    def __init__(self, model: nn.Module, processor, name: str, pooling: str, config=None):
        super().__init__()
        _check_pooling(name, pooling, ("cls", "mean"))
        self.config_to_save = config if config is not None else model.config
        self.model = _drop_pooler(model).eval()
        self.processor, self.name, self.pooling = processor, name, pooling
        self.image_hidden_dim = self.embed_dim = int(model.config.hidden_size)

    @classmethod
    def build(cls, name: str, config, pooling: str = "cls", trust_remote_code: bool = False) -> "HFVisionBackbone":
        from transformers import AutoModel

        processor = _load_processor(name, config)
        return cls(AutoModel.from_pretrained(name, trust_remote_code=trust_remote_code), processor, name, pooling, config)

    def spec(self) -> Dict[str, Any]:
        return {"family": "hf", "kind": "vision", "name": self.name, "pooling": self.pooling}

    @classmethod
    def rebuild(cls, spec: Dict[str, Any], folder: str) -> "HFVisionBackbone":
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        config = AutoConfig.from_pretrained(folder)
        return cls(AutoModel.from_config(config), AutoImageProcessor.from_pretrained(folder), spec.get("name", folder),
                   spec["pooling"], config)

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        return _pixel_transform(self.processor)

    def image_features(self, pixels: torch.Tensor) -> ImageFeatures:
        hidden = self.model(pixel_values=pixels).last_hidden_state
        cfg = self.model.config
        size, patch = cfg.image_size, cfg.patch_size
        grid = (size // patch) ** 2 if isinstance(size, int) else (size[0] // patch) * (size[1] // patch)
        prefix = hidden.shape[1] - grid  # CLS (+ distillation / register tokens)
        if prefix < 0:
            raise ModelLoadError(f"hf:{self.name}: {hidden.shape[1]} tokens for a {grid}-patch grid")
        tokens = hidden[:, prefix:]
        pooled = hidden[:, 0] if self.pooling == "cls" and prefix else tokens.mean(1)
        return ImageFeatures(hidden=tokens, pooled=pooled, summary=pooled)


class HFClipBackbone(HFBackbone):
    """``CLIPModel``: text tower (EOS-pooled, projected) and vision tower (CLS, projected)."""

    kind = "clip"
    has_text = True
    has_image = True

    def __init__(self, model: nn.Module, tokenizer, processor, name: str, config=None):
        super().__init__()
        self.config_to_save = config if config is not None else model.config
        self.model = model.eval()
        self.tokenizer, self.processor, self.name = tokenizer, processor, name
        self.embed_dim = int(model.config.projection_dim)
        self.text_hidden_dim = int(model.config.text_config.hidden_size)
        self.image_hidden_dim = int(model.config.vision_config.hidden_size)
        self.text_vocab_size = int(model.config.text_config.vocab_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self._specials = _special_ids(tokenizer)

    @classmethod
    def build(cls, name: str, config, trust_remote_code: bool = False) -> "HFClipBackbone":
        from transformers import CLIPModel

        return cls(CLIPModel.from_pretrained(name), _load_tokenizer(name), _load_processor(name, config), name, config)

    def spec(self) -> Dict[str, Any]:
        return {"family": "hf", "kind": "clip", "name": self.name}

    @classmethod
    def rebuild(cls, spec: Dict[str, Any], folder: str) -> "HFClipBackbone":
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel

        config = AutoConfig.from_pretrained(folder)
        return cls(CLIPModel(config), AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder),
                   spec.get("name", folder), config)

    def tower_of(self, name: str) -> Optional[str]:
        if name.startswith(("model.vision_model.", "model.visual_projection.")):
            return "image"
        if name.startswith(("model.text_model.", "model.text_projection.")):
            return "text"
        return None

    def tokenize(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def text_special_ids(self) -> List[int]:
        return list(self._specials)

    def text_vocab_embeddings(self) -> torch.Tensor:
        return self.model.text_model.embeddings.token_embedding.weight

    def text_features(self, batch: Dict[str, torch.Tensor]) -> TextFeatures:
        out = self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        pooled = self.model.text_projection(out.pooler_output)
        return TextFeatures(ids=batch["input_ids"], mask=batch["attention_mask"].bool(), hidden=out.last_hidden_state,
                            pooled=pooled, summary=out.pooler_output)

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        return _pixel_transform(self.processor)

    def image_features(self, pixels: torch.Tensor) -> ImageFeatures:
        vm = self.model.vision_model
        out = vm(pixel_values=pixels)
        pooled = self.model.visual_projection(out.pooler_output)
        tokens = vm.post_layernorm(out.last_hidden_state[:, 1:])  # patches in the same space as the pooled CLS
        return ImageFeatures(hidden=tokens, pooled=pooled, summary=out.pooler_output)


_KINDS = {"text": HFTextBackbone, "vision": HFVisionBackbone, "clip": HFClipBackbone}


def _split_mlm(full: nn.Module):
    """Split ``*ForMaskedLM`` into (base model, head module applied to hidden states)."""
    prefix = full.base_model_prefix
    others = [m for n, m in full.named_children() if n != prefix]
    if len(others) != 1:
        raise ModelLoadError(f"{type(full).__name__}: cannot isolate its MLM head; pass mlm_head='none'")
    return full.base_model, others[0]
