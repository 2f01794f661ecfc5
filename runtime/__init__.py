"""comfyc's lean runtime: numpy + onnxruntime (torch only for fallback stages).

``comfyc.runtime.load(path, backend=None)`` reads a compiled artifact and returns a
:class:`~comfyc.runtime.program.Program`; ``program.run({"seed": 7}, output_dir="out")`` runs
it and returns a :class:`~comfyc.runtime.program.RunResult`. Every error the runtime raises
for something a user can fix is a :class:`comfyc.runtime.Error`.

Importing this package imports neither torch, diffusers nor transformers — nor numpy until one
of the names below is used (the node registry and ``comfyc check`` load parts of the runtime
and stay cheap).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import Error, ParamError, ProgramError

__all__ = ["load", "Error", "ArtifactError", "BackendError", "Program", "ProgramError",
           "ParamError", "RunResult"]

_LAZY = {
    "load": ".artifact",
    "ArtifactError": ".artifact",
    "BackendError": ".backends.base",
    "Program": ".program",
    "RunResult": ".program",
}


def __getattr__(name: str) -> Any:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module 'comfyc.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value
