"""Saving and loading LSBModel folders: JSON config + safetensors, atomic, validated, no pickle.

Layout of a saved folder::

    lsb_config.json      format, version, backbone spec, heads, codebook, fusion, checksum
    model.safetensors    every tensor of the model (backbone, heads, codebook)
    backbone/            what the backbone library needs to rebuild the architecture
                         (open_clip_config.json | HF config.json + tokenizer files)
    README.md            a model card
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Dict, Tuple

import torch

from . import __version__
from .errors import ModelLoadError

__all__ = ["save_model", "load_model", "FORMAT_VERSION", "CONFIG_NAME", "WEIGHTS_NAME", "atomic_folder"]

FORMAT = "lsb-mm"
FORMAT_VERSION = 1
CONFIG_NAME = "lsb_config.json"
WEIGHTS_NAME = "model.safetensors"
BACKBONE_DIR = "backbone"


def _tensors(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    # clone: safetensors refuses shared storage (tied embeddings); contiguous: required on disk
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def _digest(tensors: Dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def state_fingerprint(model) -> str:
    h = hashlib.sha256(json.dumps(model.config(), sort_keys=True).encode())
    h.update(_digest(_tensors(model)).encode())
    return h.hexdigest()[:16]


class atomic_folder:
    """Context manager: write into a temporary sibling folder, then swap it into place.

    A crash leaves the old folder (or nothing) and a ``.tmp-*`` sibling, never a half-written
    folder under the final name.
    """

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)

    def __enter__(self) -> str:
        parent = os.path.dirname(self.folder)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.folder)}.tmp-", dir=parent)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if os.path.exists(self.folder):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.folder)}.old-", dir=os.path.dirname(self.folder))
            os.rmdir(old)
            os.rename(self.folder, old)
        os.rename(self.tmp, self.folder)
        if old:
            shutil.rmtree(old, ignore_errors=True)


def save_model(model, folder: str) -> str:
    from safetensors.torch import save_file

    tensors = _tensors(model)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "lsb_mm_version": __version__,
              **model.config(), "weights": {"file": WEIGHTS_NAME, "count": len(tensors), "sha256": _digest(tensors)}}
    with atomic_folder(folder) as tmp:
        os.makedirs(os.path.join(tmp, BACKBONE_DIR))
        model.backbone.save_assets(os.path.join(tmp, BACKBONE_DIR))
        save_file(tensors, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(_model_card(config))
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
    return folder


def read_config(folder: str) -> Dict[str, Any]:
    if not os.path.isdir(folder):
        raise ModelLoadError(f"model folder {folder} does not exist")
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{folder} is not an lsb-mm model folder: {CONFIG_NAME} is missing")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelLoadError(f"{path}: field 'format' is {config.get('format') if isinstance(config, dict) else None!r}, expected {FORMAT!r}")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ModelLoadError(f"{path}: format_version {version!r} is not supported by lsb-mm {__version__} "
                             f"(supports 1..{FORMAT_VERSION}); upgrade lsb-mm")
    for key in ("backbone", "fusion", "weights"):
        if key not in config:
            raise ModelLoadError(f"{path}: required field {key!r} is missing")
    return config


def load_model(folder: str, device: str | torch.device = "cpu"):
    """Rebuild a model saved with ``save_pretrained``; validates files, keys, shapes and checksum."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .encoders import BACKBONES
    from .model import LSBModel

    config = read_config(folder)
    spec = config["backbone"]
    family = spec.get("family")
    if family not in BACKBONES:
        raise ModelLoadError(f"{folder}/{CONFIG_NAME}: backbone family {family!r} unknown; expected one of {sorted(BACKBONES)}")
    weights_path = os.path.join(folder, config["weights"].get("file", WEIGHTS_NAME))
    if not os.path.isfile(weights_path):
        raise ModelLoadError(f"{folder}: weights file {os.path.basename(weights_path)} is missing")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{weights_path} is corrupt or not a safetensors file: {exc}") from exc
    try:
        backbone = BACKBONES[family].from_saved(spec, os.path.join(folder, BACKBONE_DIR))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{folder}/{BACKBONE_DIR}: cannot rebuild the {family} backbone: {exc}") from exc
    th, ih, vw = config.get("text_head"), config.get("image_head"), config.get("visual_words")
    model = LSBModel(backbone, head=(th or ih or {"kind": "none"})["kind"], text_head=th and th["kind"],
                     image_head=ih and ih["kind"], vocab_size=vw["vocab_size"] if vw else 1024,
                     fusion_q=config["fusion"]["query"], fusion_p=config["fusion"]["document"],
                     head_init=config.get("head_init", "zeros"))
    _check_state(model, tensors, weights_path)
    if _digest(tensors) != config["weights"].get("sha256"):
        raise ModelLoadError(f"{weights_path}: checksum does not match {CONFIG_NAME} (file changed or corrupt)")
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval()


def _check_state(model, tensors: Dict[str, torch.Tensor], path: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(f"{path} does not match the architecture in {CONFIG_NAME}: "
                             f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                             f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for k, t in tensors.items():
        want: Tuple[int, ...] = tuple(expected[k].shape)
        if tuple(t.shape) != want:
            raise ModelLoadError(f"{path}: tensor {k!r} has shape {tuple(t.shape)}, the config implies {want}")


def _model_card(config: Dict[str, Any]) -> str:
    heads = {k: (config.get(k) or {}).get("kind") for k in ("text_head", "image_head") if config.get(k)}
    return (f"# lsb-mm model\n\nBackbone: `{config['backbone'].get('family')}:{config['backbone'].get('name')}`; "
            f"embedding dim {config.get('embed_dim')}; heads {heads}; fusion {config.get('fusion')}.\n\n"
            "```python\nimport lsb_mm\nmodel = lsb_mm.load_model('<this folder>')\n"
            "q = model.encode_text(['a query'], role='query')\n```\n\n"
            f"Saved by lsb-mm {config.get('lsb_mm_version')} (format {config.get('format_version')}).\n")
