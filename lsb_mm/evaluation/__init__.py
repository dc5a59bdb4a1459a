"""Scoring retrieval: evaluate over BEIR task folders, the metrics, and reports / galleries for people."""
from lsb_mm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
