"""``create_model`` / ``load_model`` / ``list_models``: one factory for every encoder family.

Names are ``family:identifier``:

- ``open_clip:<config name>`` (e.g. ``open_clip:ViT-B-32`` with ``pretrained=<tag or file>``,
  ``open_clip:lsb-tiny-test``), ``open_clip:hf-hub:<org>/<name>``, ``open_clip:local-dir:/path``;
- ``timm:<arch>[.<tag>]`` (``pretrained=True`` for timm's weights, ``False`` by default,
  ``weights=<file>`` for local weights);
- ``hf:<org>/<name>[@revision]`` or ``hf:<local folder>`` (text, vision and CLIP models; a
  sentence-transformers repository's ``modules.json`` is read; ``pooling=auto|cls|mean|max``).

Hub names download into the standard Hugging Face cache, or are served from it offline
(``HF_HUB_OFFLINE=1``); a name in neither fails with one line naming the cache and the command
that fetches it.

A path to a folder saved with ``save_pretrained`` is also accepted (same as ``load_model``).
"""
from __future__ import annotations

import os
from typing import Any, List, Optional

import torch

from lsb_mm.models.device import resolve_device
from lsb_mm.models.encoders import BACKBONES
from lsb_mm.errors import ModelLoadError
from lsb_mm.models.heads import head_options
from lsb_mm.models.model import LSBModel
from lsb_mm.models.pretrained import PACKAGED, resolve_packaged
from lsb_mm.models.serialization import BACKBONE_DIR, CONFIG_NAME, WEIGHTS_NAME, check_state, read_config, read_weights

__all__ = ["create_model", "load_model", "list_models", "add_model_config", "parse_model_name"]

_MODEL_KEYS = ("text_head", "image_head", "vocab_size", "fusion_q", "fusion_p", "head_init", "seed")


def parse_model_name(name: str):
    """Split ``family:identifier``; raise a clear error for an unknown family."""
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"model name must be a non-empty string, got {name!r}")
    family, sep, ident = name.partition(":")
    if not sep or family not in BACKBONES:
        raise ModelLoadError(f"model name {name!r} must start with one of "
                             f"{', '.join(f + ':' for f in sorted(BACKBONES))} or be a saved lsb-mm folder")
    if not ident:
        raise ModelLoadError(f"model name {name!r} has nothing after '{family}:'")
    return family, ident


def create_model(name: str, head: str = "clr", *, pretrained: Any = None, device: str | torch.device = "cpu",
                 text_head: Optional[str] = None, image_head: Optional[str] = None, vocab_size: int = 1024,
                 fusion_q: bool = True, fusion_p: bool = False, head_init: str = "zeros", seed: int = 0,
                 head_options: Optional[dict] = None, **backbone_options: Any) -> LSBModel:
    """Build a model: backbone ``name`` plus LexSemBridge ``head`` (``clr``, ``slr``, ``llr``, ``none``;
    ``adapter`` is the linear control).

    ``head_options`` holds per-tower head settings, e.g. ``{"text": {"w_norm": "none"}}`` for the
    paper's unnormalised CLR. ``device="auto"`` is CUDA when available. ``pretrained`` is open_clip's tag / weights file or timm's bool; other keyword options go to
    the backbone (e.g. ``pooling="mean"`` for ``hf:``, ``weights=`` or ``img_size=`` for
    ``timm:``). Random initialisation is seeded by ``seed`` without touching the global RNG.
    """
    target = _device(device)  # checked before anything is built
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if isinstance(name, str) and os.path.isfile(os.path.join(name, CONFIG_NAME)):
        if backbone_options:
            raise ModelLoadError(f"{name} is a saved model: its backbone is fixed, options {sorted(backbone_options)} do not apply")
        return load_model(name, device=device)
    given = name
    if isinstance(name, str) and name in PACKAGED:
        name, backbone_options = resolve_packaged(name, backbone_options)
    family, ident = parse_model_name(name)
    opts = dict(backbone_options)
    if pretrained is not None:
        if family == "hf":
            raise ModelLoadError("hf: models are always loaded with their weights; 'pretrained' does not apply")
        opts["pretrained"] = pretrained
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            backbone = BACKBONES[family].create(ident, **opts)
        except TypeError as exc:  # an option this family does not take
            raise ModelLoadError(f"{name}: bad options {sorted(opts)}: {exc}") from exc
        model = LSBModel(backbone, head=head, text_head=text_head, image_head=image_head, vocab_size=vocab_size,
                         fusion_q=fusion_q, fusion_p=fusion_p, head_init=head_init, seed=seed, head_options=head_options)
    model.name = given
    return model.to(target).eval()


def _device(device: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when torch sees a GPU, else the CPU; anything else checked (:func:`resolve_device`)."""
    return resolve_device(device, "device")


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> LSBModel:
    """Rebuild a model saved with ``save_pretrained``; validates files, keys, shapes and checksum.

    Like :func:`create_model`, it leaves the global random state untouched.
    """
    target = _device(device)  # checked before anything is read
    folder = os.fspath(folder)
    config = read_config(folder)
    spec = config["backbone"]
    family = spec.get("family") if isinstance(spec, dict) else None
    if family not in BACKBONES:
        raise ModelLoadError(f"{folder}/{CONFIG_NAME}: backbone family {family!r} unknown; expected one of {sorted(BACKBONES)}")
    tensors = read_weights(folder, config)
    th, ih, vw = config.get("text_head"), config.get("image_head"), config.get("visual_words")
    with torch.random.fork_rng(devices=[]):  # the architecture's random init is overwritten by the weights
        try:
            backbone = BACKBONES[family].from_saved(spec, os.path.join(folder, BACKBONE_DIR))
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{folder}/{BACKBONE_DIR}: cannot rebuild the {family} backbone: {exc}") from exc
        model = LSBModel(backbone, head=(th or ih or {"kind": "none"})["kind"], text_head=th and th["kind"],
                         image_head=ih and ih["kind"], vocab_size=vw["vocab_size"] if vw else 1024,
                         fusion_q=config["fusion"]["query"], fusion_p=config["fusion"]["document"],
                         head_init=config.get("head_init", "zeros"),
                         head_options={side: head_options(c) for side, c in (("text", th), ("image", ih)) if c})
    check_state(model, tensors, os.path.join(folder, config["weights"].get("file", WEIGHTS_NAME)))
    model.load_state_dict(tensors, strict=True)
    return model.to(target).eval()


_UNLISTED = {
    "hf": "hf: models are Hugging Face hub ids or local folders and have no registry here to list; "
          "pass hf:<org>/<name> (browse https://huggingface.co/models) or hf:<folder>",
    "dual": "dual: encoders are built from two other names, dual:<text name>|<image name>; list those families "
            "(list_models('open_clip'), list_models('timm'))",
}


def list_models(family: Optional[str] = None) -> List[str]:
    """Known encoder names: by default the packaged ones with real weights (``minilm``,
    ``effnet-lite0``, ``minilm+effnet-lite0``; ``family="packaged"``) and open_clip's configs
    (``family="open_clip"``); timm's with ``family="timm"``. ``hf`` and ``dual`` have no registry:
    asking for them raises and says why."""
    if family in _UNLISTED:
        raise ModelLoadError(_UNLISTED[family])
    if family not in (None, "packaged", "open_clip", "timm"):
        raise ModelLoadError(f"unknown family {family!r}; expected packaged or one of {sorted(BACKBONES)}")
    if family in (None, "packaged"):
        packaged = list(PACKAGED)
        if family == "packaged":
            return packaged
        return packaged + list_models("open_clip")
    if family == "timm":
        import timm

        return [f"timm:{n}" for n in timm.list_models()]
    import open_clip

    from lsb_mm.models.encoders.open_clip_backbone import register_lsb_configs

    register_lsb_configs()
    return [f"open_clip:{n}" for n in open_clip.list_models()]


def add_model_config(path: str) -> None:
    """Register open_clip model configs (a JSON file or a folder of them) as ``open_clip:<stem>``."""
    import open_clip

    if not os.path.exists(path):
        raise ModelLoadError(f"model config path {path} does not exist")
    open_clip.add_model_config(path)


def reserved_options() -> set:
    """``create_model``'s own arguments: not backbone options (``--model-option``, ``TrainConfig.model_options``)."""
    import inspect

    return {n for n, p in inspect.signature(create_model).parameters.items() if p.kind is not p.VAR_KEYWORD}
