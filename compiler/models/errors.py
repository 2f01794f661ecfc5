"""The error raised for model files that comfyc cannot read or does not support."""
from __future__ import annotations

__all__ = ["ModelFormatError"]


class ModelFormatError(ValueError):
    """A model file or folder that cannot be loaded; the message says what was found,
    what was expected and how to fix it."""
