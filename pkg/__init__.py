"""comfyc: a compiler and lean runtime for ComfyUI workflows.

The code lives in `comfyc.frontends`, `comfyc.compiler` and `comfyc.runtime`.
"""
__version__ = "0.1.0"
__all__ = ["__version__"]
