"""The model: token stream, heads, LSBModel, encoders (open_clip, timm, Hugging Face), the factory and the saved-folder format."""
