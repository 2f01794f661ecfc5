"""comfyc's lean runtime: numpy + onnxruntime (torch only for fallback stages).

``comfyc.runtime.load(path, backend=None)`` reads a compiled artifact and returns a
:class:`~comfyc.runtime.program.Program`; ``program.run({"seed": 7}, output_dir="out")`` runs
it. Importing this package imports neither torch, diffusers nor transformers.
"""

from __future__ import annotations

from .artifact import ArtifactError, load
from .program import ParamError, Program, ProgramError, RunResult

__all__ = ["load", "ArtifactError", "Program", "ProgramError", "ParamError", "RunResult"]
