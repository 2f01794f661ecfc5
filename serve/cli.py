"""Serve ComfyUI's web page and HTTP/websocket API, compiling what it is sent.

Open http://127.0.0.1:8188 in a browser for ComfyUI's own page (with the frontend package,
``pip install comfyc[web]``), or point tools that talk to ComfyUI at it: POST /prompt with an
API-format workflow. The first prompt of each graph shape runs at once on PyTorch while it is
compiled into an artifact in the background (kept in --cache-dir); later ones — other seeds,
sampler settings, prompt texts — run the artifact (--first-run compile: compile first).
ARTIFACT arguments serve precompiled artifacts to the prompts they were compiled from.

  comfyc serve                                  # http://127.0.0.1:8188
  comfyc serve txt2img.comfyc --port 8189 --token SECRET
  comfyc serve --ray --replicas 2               # the same API as a Ray Serve deployment

The server binds 127.0.0.1 unless --listen says otherwise; expose it only with --token (the
page then asks for it once). Accepted prompts are kept in a small store in the cache folder
(one per address), so a server restarted after a crash or a kill runs what it had accepted;
resources a client can fill are bounded (--max-queue, --max-history, --max-history-mb,
--cache-max-gb, --cache-max-artifacts, --max-prompt-memory-mb). One log line per prompt
(id, graph hash, tier, seconds, outcome) goes to stderr; /metrics is in Prometheus' format.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "build_local", "default_memory_budget", "run", "show_prompt_log",
           "store_path", "web_page"]


def _default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return os.environ.get("COMFYC_SERVE_CACHE") or os.path.join(base, "comfyc", "serve")


def default_memory_budget() -> int:
    """The default memory budget of one prompt: 8 GiB, or half the RAM when that is less."""
    from .engine import DEFAULT_MEMORY_BUDGET

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return DEFAULT_MEMORY_BUDGET
    return min(DEFAULT_MEMORY_BUDGET, total // 2)


def store_path(args: argparse.Namespace, cache_dir: str | Path) -> str | None:
    """The prompt store of this server: ``--queue-store``, else one per address in the cache
    folder (a server restarted on the same address takes over its predecessor's)."""
    if args.no_queue_store:
        return None
    if args.queue_store:
        return str(Path(args.queue_store).resolve())
    host = re.sub(r"[^A-Za-z0-9.]", "_", args.listen)
    kind = "ray-" if args.ray else ""
    return str(Path(cache_dir).resolve() / f"queue-{kind}{host}-{args.port}.sqlite3")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc serve``."""
    parser.add_argument("artifacts", nargs="*", metavar="ARTIFACT",
                        help="precompiled NAME.comfyc artifacts to serve")
    parser.add_argument("--listen", default="127.0.0.1", metavar="HOST",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8188, help="port (default 8188)")
    parser.add_argument("-o", "--output", dest="output_dir", default="output", metavar="DIR",
                        help="the output folder: SaveImage files, temp/ previews (default "
                             "./output)")
    # NOTE: the earlier spelling keeps working; help shows one spelling per flag.
    parser.add_argument("--output-dir", dest="output_dir", help=argparse.SUPPRESS)
    parser.add_argument("--input-dir", default="input", metavar="DIR",
                        help="where uploads go and LoadImage reads (default ./input)")
    parser.add_argument("--user-dir", default="user", metavar="DIR",
                        help="the web page's user folder: saved workflows and settings "
                             "(default ./user)")
    parser.add_argument("--front-end-root", default=None, metavar="DIR",
                        help="serve ComfyUI's web page from this folder (default: the "
                             "installed comfyui-frontend-package)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="compiled artifacts by graph shape (default $COMFYC_SERVE_CACHE "
                             "or ~/.cache/comfyc/serve)")
    parser.add_argument("--models-dir", metavar="DIR",
                        help="models folder in ComfyUI's layout (default: $COMFYC_MODELS)")
    parser.add_argument("--backend", default="ort-cpu",
                        help="stage backend of compiled artifacts (default ort-cpu)")
    parser.add_argument("--noise-mode", choices=("cpu", "cpu-legacy", "cuda"), default=None,
                        help="whose per-step noise ancestral/SDE samplers reproduce: ComfyUI on "
                             "a CPU (cpu), on a CPU before its #11528 (cpu-legacy) or on an "
                             "NVIDIA GPU (cuda); default: each artifact's own, else cpu. A "
                             "prompt may choose with extra_data {\"comfyc\": {\"noise_mode\": "
                             "...}}")
    parser.add_argument("--token", default=os.environ.get("COMFYC_SERVE_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' (default "
                             "$COMFYC_SERVE_TOKEN; none)")
    parser.add_argument("--max-request-mb", type=float, default=32.0, metavar="MB",
                        help="largest request body, uploads included (default 32)")
    parser.add_argument("--max-history", type=int, default=1000, metavar="N",
                        help="finished prompts kept in /history (default 1000)")
    parser.add_argument("--max-history-mb", type=float, default=128.0, metavar="MB",
                        help="bytes of /history kept, entries as JSON (default 128)")
    parser.add_argument("--max-queue", type=int, default=10000, metavar="N",
                        help="pending prompts accepted; more get 429 (default 10000)")
    parser.add_argument("--cache-max-gb", type=float, default=10.0, metavar="GB",
                        help="compiled artifacts kept in --cache-dir, least recently used go "
                             "first (default 10)")
    parser.add_argument("--cache-max-artifacts", type=int, default=64, metavar="N",
                        help="compiled artifacts kept in --cache-dir (default 64)")
    parser.add_argument("--max-prompt-memory-mb", type=float, default=None, metavar="MB",
                        help="refuse prompts (and uploads) whose estimated run memory is larger "
                             "(default: 8192 or half the RAM, whichever is less; 0: no limit)")
    parser.add_argument("--queue-store", default=None, metavar="FILE",
                        help="where accepted prompts are kept across restarts (default: "
                             "queue-HOST-PORT.sqlite3 in --cache-dir)")
    parser.add_argument("--no-queue-store", action="store_true",
                        help="keep the queue and history in memory only (lost on restart)")
    parser.add_argument("--no-compile", action="store_true",
                        help="serve only the given artifacts; refuse other prompts (400)")
    parser.add_argument("--no-preload", action="store_true",
                        help="do not import the PyTorch path when the server starts (the "
                             "first prompt of a new graph shape then waits for it)")
    parser.add_argument("--first-run", choices=("torch", "compile"), default="torch",
                        help="a graph shape without an artifact: run it at once on PyTorch "
                             "while its artifact compiles in the background (torch, the "
                             "default), or compile it first (compile)")
    parser.add_argument("--lease-s", type=float, default=30.0, metavar="S",
                        help="seconds before a dead worker's prompt is run elsewhere "
                             "(default 30)")
    parser.add_argument("--ray", action="store_true",
                        help="run as a Ray Serve deployment (replicas share queue and history)")
    parser.add_argument("--replicas", type=int, default=2, metavar="N",
                        help="Ray Serve replicas (default 2; with --ray)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="join this Ray cluster (default: start a local one)")


def memory_budget(args: argparse.Namespace) -> int | None:
    """``--max-prompt-memory-mb`` in bytes (None: no limit)."""
    if args.max_prompt_memory_mb is None:
        return default_memory_budget()
    return int(args.max_prompt_memory_mb * 2**20) if args.max_prompt_memory_mb > 0 else None


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Engine's bounds from the command line."""
    return {"max_cache_bytes": int(args.cache_max_gb * 2**30),
            "max_cache_artifacts": max(1, args.cache_max_artifacts),
            "memory_budget": memory_budget(args), "first_run": args.first_run,
            "noise_mode": getattr(args, "noise_mode", None)}


def hub_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Hub's bounds from the command line."""
    return {"max_history": args.max_history, "lease_s": args.lease_s,
            "max_history_bytes": int(args.max_history_mb * 2**20),
            "max_pending": args.max_queue}


def web_page(args: argparse.Namespace, engine: Any, output_dir: Path, input_dir: Path) -> Any:
    """ComfyUI's web page for ``engine`` (its files, when the frontend is installed, and the
    routes it calls)."""
    from comfyc.runtime.model_paths import MODEL_KINDS

    from .web import WebPage, find_frontend

    user_dir = Path(args.user_dir).resolve()
    user_dir.mkdir(parents=True, exist_ok=True)
    return WebPage(find_frontend(args.front_end_root), user_dir, engine.list_files,
                   tuple(MODEL_KINDS), engine.model_file, output_dir, input_dir,
                   int(args.max_request_mb * 1024 * 1024))


def build_local(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The in-process server: (app, hub, pool).

    Raises:
        StoreLockedError: Another server owns this server's prompt store.
    """
    from .app import HubAccess, ServerConfig, create_app
    from .engine import Engine
    from .hub import Hub
    from .worker import WorkerPool

    output_dir = Path(args.output_dir).resolve()
    input_dir = Path(args.input_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    input_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir or _default_cache()
    engine = Engine(cache_dir, models_dir=args.models_dir, input_dir=input_dir,
                    output_dir=output_dir, backend=args.backend, artifacts=args.artifacts,
                    compile=not args.no_compile, **engine_options(args))
    engine.clean_leftovers()
    if not args.no_preload:
        engine.preload()
    hub = Hub(**hub_options(args), store_path=store_path(args, cache_dir))
    engine.report = hub.record
    pool = WorkerPool(hub, engine, output_dir)
    config = ServerConfig(engine, output_dir, input_dir, token=args.token or None,
                          max_body=int(args.max_request_mb * 1024 * 1024),
                          on_queued=pool.ensure,
                          page=web_page(args, engine, output_dir, input_dir))
    # NOTE: prompts taken over from a previous server need their workers now; no POST will
    # start them.
    for key in hub.pending_keys():
        pool.ensure(key)
    return create_app(HubAccess(hub), config), hub, pool


def _ws_protocol() -> Any:
    """uvicorn's websocket protocol, answering requests it cannot parse.

    NOTE: the websockets library answers a handshake it cannot parse (a 100 KB URL: its
    request-line limit is 8 KiB) with an HTTP 414/400 in its output buffer, but uvicorn
    0.3x–0.5x only sends responses for handshakes that did parse, so such a client waited
    forever. This subclass sends the answer and closes.
    """
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:
        return "auto"

    class Protocol(WebSocketsSansIOProtocol):  # type: ignore[misc]
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            conn = self.conn
            if (not self.handshake_initiated and conn.handshake_exc is not None
                    and not self.transport.is_closing()):
                self.transport.write(b"".join(conn.data_to_send()))
                self.transport.close()

    return Protocol


def quiet_tokens() -> None:
    """Mask ``token=…`` in every log record this process makes (uvicorn's access and error
    lines, Ray Serve's request logs …).

    NOTE: a record factory, not a filter on some loggers' handlers: uvicorn replaces its
    handlers when it starts, and records of other loggers would pass unfiltered.
    """
    from .redact import TokenFilter

    if getattr(logging.getLogRecordFactory(), "_comfyc_masks_tokens", False):
        return
    make = logging.getLogRecordFactory()
    token_filter = TokenFilter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        token_filter.filter(record)
        return record

    factory._comfyc_masks_tokens = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def show_prompt_log() -> None:
    """Show the server's own log lines on stderr: one per finished prompt (id, graph hash,
    tier, seconds, outcome) and the background compiles' (uvicorn's logging shows only
    warnings)."""
    logger = logging.getLogger("comfyc.serve")
    if any(getattr(h, "_comfyc", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("comfyc serve: %(message)s"))
    handler._comfyc = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _port_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on ``host:port`` (in use, not allowed, no such
    address), found before any model is loaded; None when it can."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {host!r}: {exc.strerror}; give an address of this machine " \
               f"with --listen (e.g. 127.0.0.1)"
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # NOTE: as uvicorn binds (SO_REUSEADDR), so a port in TIME_WAIT is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is in use (another server?); stop it or "
                        f"choose another port with --port")
            if exc.errno == errno.EACCES:
                return (f"port {port} on {host} needs more privileges than this user has; "
                        f"choose a port above 1023 with --port")
            return f"cannot listen on {host}:{port}: {exc.strerror}; check --listen and --port"
    return None


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

    from .store import StoreLockedError

    if args.listen not in ("127.0.0.1", "localhost", "::1") and not args.token:
        print(f"comfyc serve: warning: listening on {args.listen} without --token: anyone who "
              f"reaches this port can run prompts and read outputs", file=sys.stderr)
    problem = _port_problem(args.listen, args.port)
    if problem is not None:
        print(f"comfyc serve: error: {problem}", file=sys.stderr)
        return 2
    quiet_tokens()
    show_prompt_log()
    try:
        if args.ray:
            from .ray_serve import serve_ray

            return serve_ray(args)
        app, hub, pool = build_local(args)
    except (ArtifactError, StoreLockedError) as exc:
        print(f"comfyc serve: error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    recovered = hub.recovered()
    if recovered.get("queued") or recovered.get("lost"):
        print(f"comfyc serve: took over {recovered['queued']} queued prompts "
              f"({recovered['restarted']} were running when the last server stopped; "
              f"{recovered['lost']} given up)", file=sys.stderr, flush=True)
    print(f"comfyc serve: listening on http://{args.listen}:{args.port} "
          f"(outputs in {Path(args.output_dir).resolve()})", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.listen, port=args.port, log_level="warning",
                    ws_max_size=16 * 1024 * 1024, ws=_ws_protocol())
    finally:
        pool.shutdown()
        pool.engine.close()
        hub.close()
    return 0
