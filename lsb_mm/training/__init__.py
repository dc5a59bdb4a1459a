"""Training the heads: the trainer, its config and recipes, losses, DDP, checkpoints and tower-output caches."""
from lsb_mm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
