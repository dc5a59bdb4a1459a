"""lsb-mm: LexSemBridge token-aware embedding heads for text and vision retrieval.

The public names below load on first use (PEP 562), so ``import lsb_mm`` and ``lsb-mm --help``
do not import torch until something needs it."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lsb_mm._lazy import submodule_getattr
from lsb_mm._version import __version__
from lsb_mm.errors import ImageLoadError, InputError, LSBError, ModelLoadError

# public name -> the module that defines it
_LAZY = {
    "TokenStream": ".models.stream", "build_head": ".models.heads", "LSBModel": ".models.model",
    "add_model_config": ".models.factory", "create_model": ".models.factory", "list_models": ".models.factory",
    "load_model": ".models.factory",
    "TrainConfig": ".training.config", "Trainer": ".training.trainer", "train": ".training.trainer",
    "Index": ".retrieval.index", "build_index": ".retrieval.pipeline",
    "CorpusCache": ".evaluation.evaluate", "evaluate": ".evaluation.evaluate",
}

__all__ = ["__version__", "TokenStream", "LSBModel", "create_model", "load_model", "list_models",
           "add_model_config", "build_head", "TrainConfig", "Trainer", "train", "Index", "build_index", "evaluate", "CorpusCache",
           "LSBError", "InputError", "ModelLoadError", "ImageLoadError"]

if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports
    from lsb_mm.evaluation.evaluate import CorpusCache, evaluate  # noqa: F401
    from lsb_mm.models.factory import add_model_config, create_model, list_models, load_model  # noqa: F401
    from lsb_mm.models.heads import build_head  # noqa: F401
    from lsb_mm.retrieval.index import Index  # noqa: F401
    from lsb_mm.models.model import LSBModel  # noqa: F401
    from lsb_mm.retrieval.pipeline import build_index  # noqa: F401
    from lsb_mm.models.stream import TokenStream  # noqa: F401
    from lsb_mm.training.config import TrainConfig  # noqa: F401
    from lsb_mm.training.trainer import Trainer, train  # noqa: F401


_submodule = submodule_getattr(__name__)

# a module the README once named at its old place -> its place now (a DeprecationWarning says so)
_MOVED = {"pretrained": "lsb_mm.models.pretrained"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import warnings

        warnings.warn(f"lsb_mm.{name} is now {_MOVED[name]}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(_MOVED[name])
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    return _submodule(name)  # a subpackage: lsb_mm.models, lsb_mm.retrieval ...


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
