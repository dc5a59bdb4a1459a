"""The lsb-mm model folder format: JSON config + safetensors, written atomically, validated, no pickle.

This module reads and writes the files; :func:`lsb_mm.load_model` (``factory.py``) rebuilds the model.

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
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import torch

from lsb_mm._version import __version__
from lsb_mm.errors import ModelLoadError
from lsb_mm.files import atomic_folder, checksums, read_json, tensor_digest, verify_checksums

__all__ = ["save_model", "read_config", "read_weights", "check_state", "state_fingerprint", "FORMAT_VERSION",
           "CONFIG_NAME", "WEIGHTS_NAME", "BACKBONE_DIR"]

log = logging.getLogger(__name__)

FORMAT = "lsb-mm"
FORMAT_VERSION = 2  # 2: the backbone's files are checksummed in the config ("files")
CONFIG_NAME = "lsb_config.json"
WEIGHTS_NAME = "model.safetensors"
BACKBONE_DIR = "backbone"


def _tensors(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    # clone: safetensors refuses shared storage (tied embeddings); contiguous: required on disk
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def state_fingerprint(model) -> str:
    """A short hash of ``model.config()`` and every tensor of its state."""
    h = hashlib.sha256(json.dumps(model.config(), sort_keys=True).encode())
    h.update(tensor_digest(_tensors(model)).encode())
    return h.hexdigest()[:16]


def save_model(model, folder: str, training: Optional[Dict[str, Any]] = None) -> str:
    """Write ``model`` to ``folder``; ``training`` (what a run recorded: recipe, data, best
    validation, modulation) goes into ``lsb_config.json`` and the model card."""
    from safetensors.torch import save_file

    from lsb_mm.models.model_card import model_card

    tensors = _tensors(model)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "lsb_mm_version": __version__,
              **model.config(), "weights": {"file": WEIGHTS_NAME, "count": len(tensors), "sha256": tensor_digest(tensors)}}
    if training is not None:
        config["training"] = training
    with atomic_folder(folder, CONFIG_NAME, "an lsb-mm model") as tmp:
        os.makedirs(os.path.join(tmp, BACKBONE_DIR))
        model.backbone.save_assets(os.path.join(tmp, BACKBONE_DIR))
        config["files"] = _backbone_files(tmp)
        save_file(tensors, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(config, training))
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
    return folder


def read_config(folder: str) -> Dict[str, Any]:
    if not os.path.isdir(folder):
        raise ModelLoadError(f"model folder {folder} does not exist")
    path = os.path.join(folder, CONFIG_NAME)
    config = read_json(path, ModelLoadError, f"{folder} is not an lsb-mm model folder: {CONFIG_NAME} is missing")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelLoadError(f"{path}: field 'format' is {config.get('format') if isinstance(config, dict) else None!r}, expected {FORMAT!r}")
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ModelLoadError(f"{path}: format_version {version!r} is not supported by lsb-mm {__version__} "
                             f"(supports 1..{FORMAT_VERSION}); upgrade lsb-mm")
    for key in ("backbone", "fusion", "weights") + (("files",) if version >= 2 else ()):
        if key not in config:
            raise ModelLoadError(f"{path}: required field {key!r} is missing")
    if version >= 2:
        _check_backbone_files(folder, config["files"], path)
    else:
        log.warning("%s: saved by an older lsb-mm (format 1) that did not checksum its backbone files; they are not "
                    "verified (save it again to verify them)", folder)
    return config


def _backbone_names(folder: str) -> List[str]:
    """Every file in ``folder/backbone``, as paths under ``folder`` (``/``-separated), sorted."""
    out = []
    for root, dirs, files in os.walk(os.path.join(folder, BACKBONE_DIR)):
        dirs.sort()
        out += [os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/") for name in sorted(files)]
    return out


def _backbone_files(folder: str) -> Dict[str, str]:
    """``{path under the folder: SHA-256}`` of every file in ``folder/backbone``."""
    return checksums(folder, _backbone_names(folder))


def _check_backbone_files(folder: str, recorded: Any, path: str) -> None:
    """The backbone's files (tokenizer, configs) are exactly those recorded, unchanged: a missing or
    edited tokenizer would otherwise load quietly as a different model."""
    if not isinstance(recorded, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in recorded.items()):
        raise ModelLoadError(f"{path}: field 'files' must map each backbone file to its SHA-256")
    found = _backbone_names(folder)
    missing, extra = sorted(set(recorded) - set(found)), sorted(set(found) - set(recorded))
    if missing or extra:
        raise ModelLoadError(f"{folder}: backbone files differ from {CONFIG_NAME}: "
                             + "; ".join(x for x in (f"missing {missing[:3]}" if missing else "",
                                                     f"not recorded {extra[:3]}" if extra else "") if x))
    verify_checksums(folder, recorded, sorted(recorded), path, ModelLoadError)


def read_weights(folder: str, config: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The tensors of a saved folder, checked against the checksum in its config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    name = config["weights"].get("file", WEIGHTS_NAME) if isinstance(config["weights"], dict) else None
    if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
        raise ModelLoadError(f"{folder}/{CONFIG_NAME}: weights.file must be a file name inside the folder, got {name!r}")
    weights_path = os.path.join(folder, name)
    if not os.path.isfile(weights_path):
        raise ModelLoadError(f"{folder}: weights file {os.path.basename(weights_path)} is missing")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{weights_path} is corrupt or not a safetensors file: {exc}") from exc
    if tensor_digest(tensors) != config["weights"].get("sha256"):
        raise ModelLoadError(f"{weights_path}: checksum does not match {CONFIG_NAME} (file changed or corrupt)")
    return tensors


def check_state(model, tensors: Dict[str, torch.Tensor], path: str) -> None:
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
