"""``comfyc serve --ray``: the same ASGI app as a Ray Serve deployment, with no single point
of failure for the queue and the history.

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

Losing any one process loses nothing accepted:

* a **replica** that dies stops heart-beating; after ``--lease-s`` its running prompt goes back
  to the front of the queue and another replica runs it. Ray Serve restarts the replica.
* the **hub** writes every accepted prompt, every lease (owner and claim) and every result to
  its SQLite store (in ``--cache-dir``) before it answers. Its process dying is one of Ray's
  fault-tolerance cases: the actor is created with ``max_restarts=-1`` and
  ``max_task_retries=-1``, so Ray starts it again and *retries* the calls that were in flight
  (a replica's request waits a few seconds, it does not fail). The new hub reads the store:
  pending prompts queue again, running prompts keep their leases (their workers live on and
  finish them), the history is there. Retried calls are idempotent — ``submit`` carries the
  prompt id and a request id made by the replica, ``claim`` a claim id, and ``finish``
  recognises a result it already recorded — so a retry never queues, leases or records a
  prompt twice. What is lost: websocket messages the old hub had not yet handed to a
  connection (a client then reads the result from ``/history``), and ``/metrics`` counters
  (Prometheus takes a counter reset in its stride).
* the **driver** (this command): with ``--ray-address`` the hub is a *detached* actor and Ray
  Serve's application is detached too, so the deployment outlives it; ``comfyc serve --ray``
  started again finds the running hub. Without ``--ray-address`` this process started the
  local Ray cluster itself (its GCS and raylet), and that cluster ends with it: for a cluster
  that outlives any one process, start Ray with ``ray start --head`` (with GCS fault
  tolerance backed by Redis for the head node) and pass ``--ray-address``.
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

            from .cli import quiet_tokens, show_prompt_log
            from .engine import Engine
            from .worker import Worker

            quiet_tokens()
            show_prompt_log()
            self.settings = settings
            self.handle = ray.get_actor(HUB_NAME, namespace=NAMESPACE)
            self.owner = f"replica-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            hub = _SyncHub(self.handle, settings["lease_s"])
            self.engine = Engine(settings["cache_dir"], models_dir=settings["models_dir"],
                                 input_dir=settings["input_dir"],
                                 output_dir=settings["output_dir"], backend=settings["backend"],
                                 artifacts=settings["artifacts"],
                                 compile=settings["compile"], report=hub.record,
                                 **settings["engine"])
            if settings["preload"]:
                self.engine.preload()
            self.worker = Worker(hub, self.engine, Path(settings["output_dir"]), self.owner)
            self.worker.start()

        def __serve_build_asgi_app__(self) -> Any:
            from .app import HubAccess, ServerConfig, create_app
            from .cli import web_page

            s = self.settings
            args = argparse.Namespace(**s["page"])
            config = ServerConfig(self.engine, Path(s["output_dir"]), Path(s["input_dir"]),
                                  token=s["token"], max_body=s["max_body"],
                                  info={"replica": self.owner, "replica_pid": os.getpid()},
                                  page=web_page(args, self.engine, Path(s["output_dir"]),
                                                Path(s["input_dir"])))
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
        "engine": engine_options(args), "preload": not args.no_preload,
        "page": {"user_dir": str(Path(args.user_dir).resolve()),
                 "front_end_root": args.front_end_root, "max_request_mb": args.max_request_mb},
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
        # NOTE: the hub's prompt store is in the cache folder, which every node must reach
        # (as for artifacts); Ray restarts the hub where it can, and the new one adopts the
        # store. Detached when joining a cluster: the deployment then outlives this command.
        detached = args.ray_address is not None
        hub = ray.remote(num_cpus=0, max_concurrency=512, max_restarts=-1,
                         max_task_retries=-1)(Hub).options(
            name=HUB_NAME, lifetime="detached" if detached else None,
            get_if_exists=True).remote(**hub_options(args), adopt_running=True,
                                       lock_wait_s=60.0,
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
                # NOTE: an orderly stop ends the hub for good (Ray would restart a killed
                # one); its store keeps what was queued for the next start.
                ray.kill(hub, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - shutting down; Ray goes next in any case
            print(f"comfyc serve: warning: stopping the hub: {exc}", file=sys.stderr)
        finally:
            ray.shutdown()
    return 0
