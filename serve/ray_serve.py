"""``comfyc serve --ray``: the same ASGI app as a Ray Serve deployment.

Layout on the Ray cluster:

* one **hub actor** (:class:`~.hub.Hub` as a threaded Ray actor, named ``comfyc-hub``) holds
  the queue, the leases, the history and the websocket event log, so that any replica can
  answer any request: a prompt queued through one replica is visible in ``/queue`` and
  ``/history`` through every other, and its websocket messages reach the client wherever
  its connection landed;
* **replicas** (``--replicas N``) each run the ASGI app (Ray Serve's HTTP proxy spreads
  requests and websocket connections over them) and one worker that claims prompts from
  the hub and runs them on its own engine (compiled artifacts are shared through
  ``--cache-dir``; outputs through ``--output`` — both must be on a shared filesystem
  when replicas span machines).

A replica that dies stops heart-beating; after ``--lease-s`` its running prompt goes back to
the front of the queue and another replica runs it, so a prompt whose POST was answered 200
is never lost. Ray Serve restarts the dead replica.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

__all__ = ["HUB_NAME", "NAMESPACE", "serve_ray"]

HUB_NAME = "comfyc-hub"
NAMESPACE = "comfyc"


class _SyncHub:
    """Blocking calls to the hub actor, for worker threads."""

    def __init__(self, handle: Any, lease_s: float) -> None:
        self._handle = handle
        self.lease_s = lease_s

    def __getattr__(self, name: str) -> Any:
        import ray

        method = getattr(self._handle, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return ray.get(method.remote(*args, **kwargs))

        return call


def _replica_class() -> Any:
    """The deployment class (built lazily: importing ray is slow)."""
    from ray import serve

    class ComfycReplica:
        """One replica: the ASGI app plus a worker claiming prompts from the hub."""

        def __init__(self, settings: dict[str, Any]) -> None:
            import ray

            from .cli import quiet_tokens
            from .engine import Engine
            from .worker import Worker

            quiet_tokens()
            self.settings = settings
            self.handle = ray.get_actor(HUB_NAME, namespace=NAMESPACE)
            self.owner = f"replica-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.engine = Engine(settings["cache_dir"], models_dir=settings["models_dir"],
                                 input_dir=settings["input_dir"],
                                 output_dir=settings["output_dir"], backend=settings["backend"],
                                 artifacts=settings["artifacts"],
                                 compile=settings["compile"], **settings["engine"])
            self.worker = Worker(_SyncHub(self.handle, settings["lease_s"]), self.engine,
                                 Path(settings["output_dir"]), self.owner)
            self.worker.start()

        def __serve_build_asgi_app__(self) -> Any:
            from .app import HubAccess, ServerConfig, create_app

            s = self.settings
            config = ServerConfig(self.engine, Path(s["output_dir"]), Path(s["input_dir"]),
                                  token=s["token"], max_body=s["max_body"],
                                  info={"replica": self.owner, "replica_pid": os.getpid()})
            return create_app(HubAccess(self.handle, remote=True), config)

    return serve.ingress()(ComfycReplica)


def serve_ray(args: argparse.Namespace) -> int:
    """Start Ray (or join ``--ray-address``), the hub actor and the deployment; block until
    SIGINT/SIGTERM, then shut everything down."""
    try:
        import ray
        from ray import serve
    except ImportError:
        print("comfyc serve: error: --ray needs Ray Serve; install it with "
              "`pip install comfyc[ray]`", file=sys.stderr)
        return 2
    from .hub import Hub

    output_dir = Path(args.output_dir).resolve()
    input_dir = Path(args.input_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    input_dir.mkdir(parents=True, exist_ok=True)
    from .cli import _default_cache, engine_options, hub_options, store_path

    cache_dir = str(Path(args.cache_dir or _default_cache()).resolve())
    settings = {
        "cache_dir": cache_dir,
        "models_dir": args.models_dir, "input_dir": str(input_dir),
        "output_dir": str(output_dir), "backend": args.backend,
        "artifacts": [str(Path(a).resolve()) for a in args.artifacts],
        "compile": not args.no_compile, "lease_s": args.lease_s,
        "token": args.token or None, "max_body": int(args.max_request_mb * 1024 * 1024),
        "engine": engine_options(args),
    }
    # Replicas must import comfyc the way this process does.
    ray.init(address=args.ray_address, namespace=NAMESPACE, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {
                 "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    hub = None
    try:
        # NOTE: the hub actor runs on this node, so its prompt store in the cache folder is
        # a local file; the replicas' workers claim the prompts it took over on their own.
        hub = ray.remote(num_cpus=0, max_concurrency=512)(Hub).options(
            name=HUB_NAME, lifetime=None).remote(**hub_options(args),
                                                 store_path=store_path(args, cache_dir))
        ray.get(hub.queue_remaining.remote())
        serve.start(http_options={"host": args.listen, "port": args.port})
        deployment = serve.deployment(
            _replica_class(), name="comfyc", num_replicas=args.replicas,
            ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256,
            health_check_period_s=1, health_check_timeout_s=10)
        serve.run(deployment.bind(settings), name="comfyc", route_prefix="/",
                  blocking=False)
        print(f"comfyc serve: listening on http://{args.listen}:{args.port} "
              f"(Ray Serve, {args.replicas} replicas; outputs in {output_dir})",
              file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        try:
            serve.shutdown()
            if hub is not None:
                ray.get(hub.close.remote(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - shutting down; Ray goes next in any case
            print(f"comfyc serve: warning: stopping the hub: {exc}", file=sys.stderr)
        finally:
            ray.shutdown()
    return 0
