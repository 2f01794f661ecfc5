"""comfyc: a compiler and lean runtime for ComfyUI workflows.

The code lives in five subpackages whose imports point one way: ``comfyc.frontends`` →
``comfyc.compiler`` → ``comfyc.runtime``, with ``comfyc.serve`` (the ComfyUI-compatible
server) and ``comfyc.cli`` (the ``comfyc`` command) on top.

NOTE: this file sits in ``pkg/``, not in a root folder named ``comfyc/``: such a folder
would shadow the installed package whenever Python runs from the repository root.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
