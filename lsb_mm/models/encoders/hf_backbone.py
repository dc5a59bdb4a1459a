"""Hugging Face encoders from a local folder (or the HF cache), three kinds, chosen by the config:

- ``text``: BERT / MiniLM / RoBERTa ... A sentence-transformers folder is read through its
  ``modules.json``: Transformer, then Pooling (its mode), Dense layers (with their weights) and
  Normalize, as sentence-transformers would run them; any other module is refused by name. Other
  folders pool ``cls``. A masked-LM head in the checkpoint is kept and serves CLR; otherwise CLR
  uses the tied token embeddings.
- ``vision``: ViT / DeiT / BEiT / DINOv2 ... (``AutoModel`` with patch tokens); pooling ``cls``
  (default) or ``mean`` of the patch tokens.
- ``clip``: ``CLIPModel``, both towers with their projections (a cross-modal dual encoder).

``hf:<org>/<name>[@revision]`` is a hub id: its snapshot (downloaded into the standard cache, or
served from it offline) is read exactly as the same local folder would be, ``modules.json``
included. ``trust_remote_code`` stays off unless asked for.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from lsb_mm.errors import ModelLoadError
from lsb_mm.names import POOLINGS
from lsb_mm.models.encoders.base import Backbone, ImageFeatures, TextFeatures, register_backbone

VISION_TYPES = ("vit", "deit", "beit", "dinov2", "vit_msn", "vit_mae", "data2vec-vision", "dinov3_vit")


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return None


ST_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
# sentence-transformers' pooling modes: old configs set one boolean each, newer ones name the mode
_ST_POOL_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
                  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
# parameter-free torch activations a Dense module may name (no import of arbitrary classes)
_ACTIVATIONS = ("Tanh", "Identity", "ReLU", "GELU", "Sigmoid", "SiLU", "Softplus", "ELU", "Mish", "Hardtanh", "Softsign")


def _st_pooling(path: str, config: Dict[str, Any]) -> str:
    modes = [config["pooling_mode"]] if isinstance(config.get("pooling_mode"), str) else \
        [mode for flag, mode in _ST_POOL_FLAGS.items() if config.get(flag)]
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise ModelLoadError(f"{path}: pooling {modes or 'none'} is not supported; lsb-mm pools with one of {POOLINGS} "
                             "(pass pooling=... to override)")
    return modes[0]


def _activation(path: str, name: Optional[str]) -> str:
    name = name or "torch.nn.modules.activation.Tanh"  # sentence-transformers' default
    short = name.rsplit(".", 1)[-1]
    if not name.startswith("torch.nn.") or short not in _ACTIVATIONS:
        raise ModelLoadError(f"{path}: Dense activation {name!r} is not supported; expected one of torch.nn.{_ACTIVATIONS}")
    return short


def _dense_weights(folder: str) -> Dict[str, torch.Tensor]:
    st_file, pt_file = os.path.join(folder, "model.safetensors"), os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(st_file):
        from safetensors.torch import load_file

        return load_file(st_file)
    if os.path.isfile(pt_file):
        return torch.load(pt_file, map_location="cpu", weights_only=True)  # tensors only: nothing is unpickled
    raise ModelLoadError(f"{folder}: the Dense module's weights (model.safetensors or pytorch_model.bin) are missing")


def sentence_transformers_modules(folder: str) -> Dict[str, Any]:
    """What a sentence-transformers folder's ``modules.json`` asks for (empty if the folder has none):
    ``pooling``, ``max_length``, ``dense`` (layer specs with their ``state`` tensors) and ``normalize``.

    The pipeline must be Transformer, Pooling, Dense*, Normalize? -- the modules whose output
    lsb-mm reproduces exactly; any other module (or order) is refused by name.
    """
    path = os.path.join(folder, "modules.json")
    modules = _read_json(path)
    if modules is None:
        return {}
    if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str) for m in modules):
        raise ModelLoadError(f"{path}: expected a list of {{\"type\", \"path\"}} objects")
    out: Dict[str, Any] = {"dense": [], "normalize": False}
    names = []
    for m in modules:
        short = m["type"].rsplit(".", 1)[-1]
        if not m["type"].startswith("sentence_transformers.") or short not in ST_MODULES:
            raise ModelLoadError(f"{path}: module {m.get('name', len(names))!r} is {m['type']!r}; lsb-mm reads the "
                                 f"sentence-transformers modules {ST_MODULES} only")
        names.append(short)
    order = "".join({"Transformer": "T", "Pooling": "P", "Dense": "D", "Normalize": "N"}[n] for n in names)
    if not re.fullmatch(r"TPD*N?", order):
        raise ModelLoadError(f"{path}: modules {names} are not Transformer, Pooling, Dense..., Normalize; "
                             "lsb-mm cannot reproduce this pipeline")
    root = os.path.realpath(folder)
    for m, short in zip(modules, names):
        sub = os.path.join(folder, m.get("path") or "")
        if not isinstance(m.get("path", ""), str) or os.path.commonpath([root, os.path.realpath(sub)]) != root:
            raise ModelLoadError(f"{path}: module path {m.get('path')!r} leaves the folder")
        if short == "Transformer" and os.path.abspath(sub) != os.path.abspath(folder):
            raise ModelLoadError(f"{path}: the Transformer module lives in {m.get('path')!r}; lsb-mm expects it at the "
                                 "folder's top level (path \"\")")
        if short == "Pooling":
            config = _read_json(os.path.join(sub, "config.json"))
            if config is None:
                raise ModelLoadError(f"{sub}/config.json is missing (the Pooling module's settings)")
            try:
                out["pooling"] = _st_pooling(os.path.join(sub, "config.json"), config)
            except ModelLoadError as exc:  # raised only if the user does not choose the pooling
                out["pooling_error"] = str(exc)
        elif short == "Dense":
            cpath = os.path.join(sub, "config.json")
            config = _read_json(cpath)
            if config is None:
                raise ModelLoadError(f"{cpath} is missing (the Dense module's settings)")
            for key in ("module_input_name", "module_output_name"):
                if config.get(key, "sentence_embedding") != "sentence_embedding":
                    raise ModelLoadError(f"{cpath}: {key} {config[key]!r}; lsb-mm applies Dense to the sentence embedding only")
            try:
                spec = {"in_features": int(config["in_features"]), "out_features": int(config["out_features"]),
                        "bias": bool(config.get("bias", True)),
                        "activation": _activation(cpath, config.get("activation_function"))}
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelLoadError(f"{cpath}: expected integer in_features and out_features: {exc}") from exc
            state = _dense_weights(sub)
            want = {"linear.weight": (spec["out_features"], spec["in_features"])}
            if spec["bias"]:
                want["linear.bias"] = (spec["out_features"],)
            got = {k: tuple(v.shape) for k, v in state.items()}
            if got != want:
                raise ModelLoadError(f"{sub}: Dense weights {got} do not match its config {want}")
            out["dense"].append({**spec, "state": state})
        elif short == "Normalize":
            out["normalize"] = True
    sb = _read_json(os.path.join(folder, "sentence_bert_config.json"))
    if sb and sb.get("max_seq_length"):
        out["max_length"] = int(sb["max_seq_length"])
    return out


def _dense_stack(specs: List[Dict[str, Any]], width: int, name: str) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i, spec in enumerate(specs):
        if spec["in_features"] != width:
            raise ModelLoadError(f"hf:{name}: Dense layer {i} takes {spec['in_features']} features, gets {width}")
        layers += [nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"]),
                   getattr(nn, spec["activation"])()]
        width = spec["out_features"]
    return nn.Sequential(*layers)


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
        from lsb_mm.models.encoders.hub import resolve

        folder = resolve(f"hf:{name}", name)  # before transformers is imported: a hub miss fails in seconds
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"hf:{name}: cannot read the model's config.json in {folder}: {exc}") from exc
        sub = _KINDS[_hf_kind(config)]
        try:
            backbone = sub.build(folder, config, trust_remote_code=trust_remote_code, **options)
        except TypeError as exc:  # an option this kind does not take
            raise ModelLoadError(f"hf:{name} ({sub.kind} model): {exc}") from exc
        backbone.name = name  # the id the user gave (recorded in the saved spec), not the snapshot path
        return backbone

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
                 mlm_head: Optional[nn.Module] = None, config=None, dense: Optional[List[Dict[str, Any]]] = None,
                 normalize: bool = False):
        super().__init__()
        _check_pooling(name, pooling)
        self.config_to_save = config if config is not None else model.config
        self.model = _drop_pooler(model).eval()
        self.tokenizer = tokenizer
        self.name, self.pooling, self.max_length = name, pooling, int(max_length)
        self.mlm_head = mlm_head
        self.text_hidden_dim = int(model.config.hidden_size)
        # sentence-transformers' Dense layers and Normalize after the pooling (empty for other folders)
        self.dense_specs = [{k: v for k, v in d.items() if k != "state"} for d in (dense or [])]
        self.dense = _dense_stack(self.dense_specs, self.text_hidden_dim, name)
        for i, d in enumerate(dense or []):
            if "state" in d:
                self.dense[2 * i].load_state_dict({k.split(".", 1)[1]: v for k, v in d["state"].items()})
        self.normalize = bool(normalize)
        self.embed_dim = self.dense_specs[-1]["out_features"] if self.dense_specs else self.text_hidden_dim
        self.text_vocab_size = int(model.get_input_embeddings().num_embeddings)
        self._specials = _special_ids(tokenizer)

    @classmethod
    def build(cls, name: str, config, pooling: str = "auto", max_length: Optional[int] = None, mlm_head: str = "auto",
              trust_remote_code: bool = False) -> "HFTextBackbone":
        from transformers import AutoModel, AutoModelForMaskedLM

        kw = {"trust_remote_code": trust_remote_code}
        tokenizer = _load_tokenizer(name, **kw)
        st = sentence_transformers_modules(name) if os.path.isdir(name) else {}
        if pooling == "auto":
            if "pooling_error" in st:
                raise ModelLoadError(st["pooling_error"])
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
        return cls(model, tokenizer, name, pooling, max_length, head, config, st.get("dense"), st.get("normalize", False))

    def spec(self) -> Dict[str, Any]:
        return {"family": "hf", "kind": "text", "name": self.name, "pooling": self.pooling,
                "max_length": self.max_length, "mlm_head": self.mlm_head is not None,
                "dense": self.dense_specs, "normalize": self.normalize}

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
        return cls(model, tokenizer, spec.get("name", folder), spec["pooling"], spec["max_length"], head, config,
                   spec.get("dense") or [], bool(spec.get("normalize", False)))

    def tokenize(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"))

    def text_special_ids(self) -> List[int]:
        return list(self._specials)

    def text_token_names(self, ids: List[int]) -> List[str]:
        return list(self.tokenizer.convert_ids_to_tokens([int(i) for i in ids]))

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
        if self.dense_specs:
            pooled = self.dense(pooled)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
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

        processor = _load_processor(name, config, trust_remote_code=trust_remote_code)
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

        kw = {"trust_remote_code": trust_remote_code}
        return cls(CLIPModel.from_pretrained(name, **kw), _load_tokenizer(name, **kw), _load_processor(name, config, **kw),
                   name, config)

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

    def text_token_names(self, ids: List[int]) -> List[str]:
        return list(self.tokenizer.convert_ids_to_tokens([int(i) for i in ids]))

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
