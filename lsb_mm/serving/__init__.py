"""``lsb-mm serve``: the search service, its request batcher and the FastAPI app."""
from lsb_mm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
