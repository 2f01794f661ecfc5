"""The server's compile process (``python -m comfyc.serve.compile_job``): background compiles
of graph shapes, one at a time, at lower priority.

The engine starts it when a shape's first prompt has run on the torch tier (see
:mod:`.engine`) and keeps it for later shapes, so its imports (PyTorch, diffusers, onnx) are
paid once. Requests come as JSON lines on stdin — the prompt, the artifact path, the backend
and folders; for each it compiles the artifact (written to a temporary folder and renamed
into place: a kill leaves nothing half-written), printing progress lines, then one line
``{"done": PATH}`` or ``{"done": PATH, "error": MESSAGE}``. It exits when stdin closes, when
it has waited ``--idle-exit`` seconds for a request (its memory goes back to the system), and
with the server: a compile whose server died is not finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
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

        # PR_SET_PDEATHSIG (1): the kernel kills us when the thread that started us exits.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()


def _compile(request: dict[str, Any]) -> dict[str, Any]:
    from .engine import _first_line, compile_prompt

    done: dict[str, Any] = {"done": request.get("path")}
    try:
        compile_prompt(request["prompt"], Path(request["path"]), backend=request["backend"],
                       models_dir=request.get("models_dir"),
                       input_dir=Path(request["input_dir"]),
                       output_dir=Path(request["output_dir"]) if request.get("output_dir")
                       else None, say=lambda message: print(message, flush=True))
    except Exception as exc:  # noqa: BLE001 - reported to the server, which keeps serving
        done["error"] = _first_line(exc)
    return done


def main(argv: list[str] | None = None) -> int:
    """Serve compile requests from stdin; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m comfyc.serve.compile_job")
    parser.add_argument("--parent", type=int, default=0, help="the server's process id")
    parser.add_argument("--nice", type=int, default=0, help="niceness to add")
    parser.add_argument("--idle-exit", type=float, default=300.0, metavar="S")
    args = parser.parse_args(argv)
    if args.parent:
        _die_with(args.parent)
    with contextlib.suppress(OSError):
        os.nice(args.nice)
    stdin = sys.stdin.buffer
    while True:
        ready, _, _ = select.select([stdin], [], [], args.idle_exit)
        if not ready:
            return 0  # Idle: the next compile starts a new process.
        line = stdin.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        print(json.dumps(_compile(json.loads(line))), flush=True)


if __name__ == "__main__":
    sys.exit(main())
