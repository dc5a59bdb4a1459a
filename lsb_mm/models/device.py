"""Torch device names as users type them, checked before anything is placed: ``auto``, ``cpu``,
``cuda``, ``cuda:N`` or ``mps``. A GPU that is not there is one clear error, never a torch traceback
halfway through loading a model."""
from __future__ import annotations

from typing import Any

import torch

from lsb_mm.errors import InputError

__all__ = ["resolve_device"]

KINDS = ("cpu", "cuda", "mps")


def resolve_device(device: Any, what: str = "device") -> torch.device:
    """The :class:`torch.device` that ``device`` names (``"auto"``: CUDA when torch sees a GPU, else
    the CPU); ``what`` names the argument in the error (``--device``, ``device``)."""
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise InputError(f"{what} must be a string such as 'auto', 'cpu', 'cuda' or 'cuda:1', got {type(device).__name__} "
                         f"{device!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in KINDS:
        raise InputError(f"{what} {device!r} is not a device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"{what} {device!r}: torch sees no CUDA GPU on this machine (torch {torch.__version__}, "
                             f"CUDA build {torch.version.cuda or 'none'}); use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"{what} {device!r}: torch sees {count} CUDA GPU(s), numbered 0..{count - 1}")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"{what} {device!r}: this torch has no usable Apple MPS device; use 'cpu' or 'auto'")
    return dev
