"""Submodules as attributes on first use (PEP 562): after ``import lsb_mm``, ``lsb_mm.models.pretrained``
imports ``lsb_mm.models.pretrained`` when it is first read, as ``torch.nn.functional`` is there."""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable

__all__ = ["submodule_getattr"]


def submodule_getattr(package: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports its submodule ``name`` on first access."""
    def __getattr__(name: str) -> Any:
        if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
