"""lsb-mm: LexSemBridge token-aware embedding heads for text and vision retrieval."""
from ._version import __version__

from .errors import ImageLoadError, InputError, LSBError, ModelLoadError  # noqa: E402
from .stream import TokenStream  # noqa: E402
from .heads import build_head  # noqa: E402
from .model import LSBModel  # noqa: E402
from .factory import add_model_config, create_model, list_models, load_model  # noqa: E402
from .trainer import TrainConfig, Trainer, train  # noqa: E402
from .index import Index  # noqa: E402
from .evaluation import CorpusCache, evaluate  # noqa: E402

__all__ = ["__version__", "TokenStream", "LSBModel", "create_model", "load_model", "list_models",
           "add_model_config", "build_head", "TrainConfig", "Trainer", "train", "Index", "evaluate", "CorpusCache", "LSBError", "InputError", "ModelLoadError", "ImageLoadError"]
