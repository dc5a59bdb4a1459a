"""Beyond one process: the local / Ray embedding engine and the embedding shards it writes."""
from lsb_mm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
