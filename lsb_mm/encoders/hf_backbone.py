"""Hugging Face text encoders (BERT, MiniLM, RoBERTa, ...) from a local folder or the HF cache.

Pooling follows sentence-transformers when the folder is one (``1_Pooling/config.json``,
``sentence_bert_config.json``), else ``cls``. When the checkpoint has a masked-LM head it is
kept and serves CLR; otherwise CLR uses the tied projection on the token embeddings.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..errors import ModelLoadError
from .base import Backbone, TextFeatures, register_backbone

POOLINGS = ("cls", "mean", "max")


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


@register_backbone("hf")
class HFBackbone(Backbone):
    has_text = True

    def __init__(self, model: nn.Module, tokenizer, name: str, pooling: str, max_length: int,
                 mlm_head: Optional[nn.Module] = None, config=None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ModelLoadError(f"hf:{name}: pooling must be one of {POOLINGS}, got {pooling!r}")
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # the BERT-style pooler is never used for embeddings; drop its weights
        self.config_to_save = config if config is not None else model.config
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name, self.pooling, self.max_length = name, pooling, int(max_length)
        self.mlm_head = mlm_head
        emb = model.get_input_embeddings()
        self.text_hidden_dim = int(model.config.hidden_size)
        self.embed_dim = self.text_hidden_dim
        self.text_vocab_size = int(emb.num_embeddings)
        pad = tokenizer.pad_token_id
        self._specials = sorted({int(i) for i in tokenizer.all_special_ids} | ({int(pad)} if pad is not None else set()))

    # -- construction --------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, pooling: str = "auto", max_length: Optional[int] = None, mlm_head: str = "auto",
               trust_remote_code: bool = False, **options: Any) -> "HFBackbone":
        from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

        if options:
            raise ModelLoadError(f"hf:{name}: unknown options {sorted(options)}")
        kw = {"trust_remote_code": trust_remote_code}
        try:
            config = AutoConfig.from_pretrained(name, **kw)
            tokenizer = AutoTokenizer.from_pretrained(name, **kw)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load Hugging Face model {name!r} offline (a local folder with config.json "
                                 f"and tokenizer files is expected): {exc}") from exc
        st = sentence_transformers_settings(name) if os.path.isdir(name) else {}
        if pooling == "auto":
            pooling = st.get("pooling", "cls")
        if max_length is None:
            max_length = st.get("max_length") or min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
        archs = config.architectures or []
        head = None
        if mlm_head not in ("auto", "none"):
            raise ModelLoadError(f"hf:{name}: mlm_head must be 'auto' or 'none', got {mlm_head!r}")
        if mlm_head == "auto" and any(a.endswith("ForMaskedLM") for a in archs):
            model, head = _split_mlm(AutoModelForMaskedLM.from_pretrained(name, **kw))
        else:
            model = AutoModel.from_pretrained(name, **kw)
        return cls(model, tokenizer, name, pooling, max_length, head, config)

    def spec(self) -> Dict[str, Any]:
        return {"family": "hf", "name": self.name, "pooling": self.pooling, "max_length": self.max_length,
                "mlm_head": self.mlm_head is not None}

    def save_assets(self, folder: str) -> None:
        self.config_to_save.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    @classmethod
    def from_saved(cls, spec: Dict[str, Any], folder: str) -> "HFBackbone":
        from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        head = None
        if spec.get("mlm_head"):
            model, head = _split_mlm(AutoModelForMaskedLM.from_config(config))
        else:
            model = AutoModel.from_config(config)
        return cls(model, tokenizer, spec.get("name", folder), spec["pooling"], spec["max_length"], head, config)

    # -- text ---------------------------------------------------------------------------
    def tokenize(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return dict(enc)

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
        out = self.model(**batch)
        hidden = out.last_hidden_state
        mask = batch["attention_mask"].bool()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        else:
            pooled = hidden.masked_fill(~mask.unsqueeze(-1), torch.finfo(hidden.dtype).min).max(1).values
        return TextFeatures(ids=batch["input_ids"], mask=mask, hidden=hidden, pooled=pooled, summary=hidden[:, 0])


def _split_mlm(full: nn.Module):
    """Split ``*ForMaskedLM`` into (base model, head module applied to hidden states)."""
    base = full.base_model
    prefix = full.base_model_prefix
    others = [m for n, m in full.named_children() if n != prefix]
    if len(others) != 1:
        raise ModelLoadError(f"{type(full).__name__}: cannot isolate its MLM head; pass mlm_head='none'")
    return base, others[0]
