"""Reading what users bring: images, documents, corpus sources, training data, BEIR task folders and splits."""
from lsb_mm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
