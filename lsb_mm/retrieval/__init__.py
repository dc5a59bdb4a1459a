"""Search: the FAISS index and its folder format, index choice, binary codes, BM25, fusion and build_index."""
from lsb_mm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
