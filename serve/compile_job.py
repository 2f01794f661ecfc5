"""The background compile of one graph shape, in its own process (``python -m``).

The server's engine starts this module when a shape first runs on the torch tier (see
:mod:`.engine`): it reads one JSON request on stdin — the prompt, the artifact path, the
backend and folders, a niceness and the server's process id — lowers its own priority,
compiles the artifact (written to a temporary folder and renamed into place, so a kill leaves
nothing half-written) and exits 0. On failure it prints ``{"error": MESSAGE}`` as its last
line and exits 1. It ends with the server: a compile whose server died is not finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _die_with(parent: int) -> None:
    """Exit when the server process goes away (killed with SIGKILL, it cannot stop us)."""
    with contextlib.suppress(Exception):
        import ctypes

        # PR_SET_PDEATHSIG: the kernel sends SIGKILL when the parent thread exits.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()


def main() -> int:
    """Run one compile request from stdin; see the module docstring."""
    request: dict[str, Any] = json.loads(sys.stdin.read())
    parent = int(request.get("parent") or 0)
    if parent:
        _die_with(parent)
    with contextlib.suppress(OSError):
        os.nice(int(request.get("nice") or 0))
    from .engine import _first_line, compile_prompt

    try:
        compile_prompt(request["prompt"], Path(request["path"]), backend=request["backend"],
                       models_dir=request.get("models_dir"),
                       input_dir=Path(request["input_dir"]),
                       output_dir=Path(request["output_dir"]) if request.get("output_dir")
                       else None, say=lambda message: print(message, flush=True))
    except Exception as exc:  # noqa: BLE001 - reported to the server, which keeps serving
        print(json.dumps({"error": _first_line(exc)}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
