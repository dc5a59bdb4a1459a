"""The model: token stream, heads, LSBModel, encoders (open_clip, timm, Hugging Face), the factory and the saved-folder format."""
from lsb_mm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
