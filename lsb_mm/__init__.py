"""lsb-mm: LexSemBridge token-aware embedding heads for text and vision retrieval.

The public names below load on first use (PEP 562), so ``import lsb_mm`` and ``lsb-mm --help``
do not import torch until something needs it."""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ImageLoadError, InputError, LSBError, ModelLoadError

# public name -> the module that defines it
_LAZY = {
    "TokenStream": ".stream", "build_head": ".heads", "LSBModel": ".model",
    "add_model_config": ".factory", "create_model": ".factory", "list_models": ".factory", "load_model": ".factory",
    "TrainConfig": ".trainer", "Trainer": ".trainer", "train": ".trainer",
    "Index": ".index", "CorpusCache": ".evaluation", "evaluate": ".evaluation", "build_index": ".pipeline",
}

__all__ = ["__version__", "TokenStream", "LSBModel", "create_model", "load_model", "list_models",
           "add_model_config", "build_head", "TrainConfig", "Trainer", "train", "Index", "build_index", "evaluate", "CorpusCache",
           "LSBError", "InputError", "ModelLoadError", "ImageLoadError"]

if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports
    from .evaluation import CorpusCache, evaluate  # noqa: F401
    from .factory import add_model_config, create_model, list_models, load_model  # noqa: F401
    from .heads import build_head  # noqa: F401
    from .index import Index  # noqa: F401
    from .model import LSBModel  # noqa: F401
    from .pipeline import build_index  # noqa: F401
    from .stream import TokenStream  # noqa: F401
    from .trainer import TrainConfig, Trainer, train  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # a submodule: lsb_mm.pretrained, lsb_mm.lexical ...
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
