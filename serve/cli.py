"""Serve ComfyUI's HTTP/websocket API, compiling what it is sent.

Tools that talk to ComfyUI (its web client excepted) can point at this server: POST /prompt
with an API-format workflow; the first prompt of each graph shape is compiled into an
artifact (kept in --cache-dir), and later ones — other seeds, sampler settings, prompt
texts — reuse it. ARTIFACT arguments serve precompiled artifacts to the prompts they were
compiled from.

  comfyc serve                                  # http://127.0.0.1:8188
  comfyc serve txt2img.comfyc --port 8189 --token SECRET
  comfyc serve --ray --replicas 2               # the same API as a Ray Serve deployment

The server binds 127.0.0.1 unless --listen says otherwise; expose it only with --token.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["add_arguments", "build_local", "run"]


def _default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return os.environ.get("COMFYC_SERVE_CACHE") or os.path.join(base, "comfyc", "serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc serve``."""
    parser.add_argument("artifacts", nargs="*", metavar="ARTIFACT",
                        help="precompiled NAME.comfyc artifacts to serve")
    parser.add_argument("--listen", default="127.0.0.1", metavar="HOST",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8188, help="port (default 8188)")
    parser.add_argument("--output-dir", default="output", metavar="DIR",
                        help="where outputs are written (default ./output)")
    parser.add_argument("--input-dir", default="input", metavar="DIR",
                        help="where uploads go and LoadImage reads (default ./input)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="compiled artifacts by graph shape (default $COMFYC_SERVE_CACHE "
                             "or ~/.cache/comfyc/serve)")
    parser.add_argument("--models-dir", metavar="DIR",
                        help="models folder in ComfyUI's layout (default: $COMFYC_MODELS)")
    parser.add_argument("--backend", default="ort-cpu",
                        help="stage backend of compiled artifacts (default ort-cpu)")
    parser.add_argument("--token", default=os.environ.get("COMFYC_SERVE_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' (default "
                             "$COMFYC_SERVE_TOKEN; none)")
    parser.add_argument("--max-request-mb", type=float, default=32.0, metavar="MB",
                        help="largest request body, uploads included (default 32)")
    parser.add_argument("--max-history", type=int, default=1000, metavar="N",
                        help="finished prompts kept in /history (default 1000)")
    parser.add_argument("--no-compile", action="store_true",
                        help="serve only the given artifacts; refuse other prompts (400)")
    parser.add_argument("--lease-s", type=float, default=30.0, metavar="S",
                        help="seconds before a dead worker's prompt is run elsewhere "
                             "(default 30)")
    parser.add_argument("--ray", action="store_true",
                        help="run as a Ray Serve deployment (replicas share queue and history)")
    parser.add_argument("--replicas", type=int, default=2, metavar="N",
                        help="Ray Serve replicas (default 2; with --ray)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="join this Ray cluster (default: start a local one)")


def build_local(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The in-process server: (app, hub, pool)."""
    from .app import HubAccess, ServerConfig, create_app
    from .engine import Engine
    from .hub import Hub
    from .worker import WorkerPool

    output_dir = Path(args.output_dir).resolve()
    input_dir = Path(args.input_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    input_dir.mkdir(parents=True, exist_ok=True)
    engine = Engine(args.cache_dir or _default_cache(), models_dir=args.models_dir,
                    input_dir=input_dir, backend=args.backend, artifacts=args.artifacts,
                    compile=not args.no_compile)
    hub = Hub(max_history=args.max_history, lease_s=args.lease_s)
    pool = WorkerPool(hub, engine, output_dir)
    config = ServerConfig(engine, output_dir, input_dir, token=args.token or None,
                          max_body=int(args.max_request_mb * 1024 * 1024),
                          on_queued=pool.ensure)
    return create_app(HubAccess(hub), config), hub, pool


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc serve``."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        print("comfyc serve: error: the server needs starlette and uvicorn; install them with "
              "`pip install comfyc[serve]`", file=sys.stderr)
        return 2
    from comfyc.runtime.artifact import ArtifactError

    if args.listen not in ("127.0.0.1", "localhost", "::1") and not args.token:
        print(f"comfyc serve: warning: listening on {args.listen} without --token: anyone who "
              f"reaches this port can run prompts and read outputs", file=sys.stderr)
    try:
        if args.ray:
            from .ray_serve import serve_ray

            return serve_ray(args)
        app, _hub, pool = build_local(args)
    except ArtifactError as exc:
        print(f"comfyc serve: error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"comfyc serve: listening on http://{args.listen}:{args.port} "
          f"(outputs in {Path(args.output_dir).resolve()})", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.listen, port=args.port, log_level="warning",
                    ws_max_size=16 * 1024 * 1024)
    finally:
        pool.shutdown()
    return 0
