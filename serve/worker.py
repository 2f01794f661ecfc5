"""Workers: run claimed prompts on the runtime and report them the way ComfyUI does.

Messages of one prompt, to the client that queued it, in ComfyUI's order (``main.py``'s
``prompt_worker`` and ``execution.py``'s ``PromptExecutor.execute``):

1. ``execution_start`` ``{prompt_id, timestamp}``
2. ``comfyc.compile`` ``{prompt_id, message}`` while a new graph shape compiles before it
   runs (``--first-run compile`` only: comfyc's own type; ComfyUI clients ignore types they
   do not know)
3. ``execution_cached`` ``{nodes, prompt_id, timestamp}`` — prompt nodes that have no op in
   the program (folded or merged at compile time: they never execute)
4. per op: ``executing`` ``{node, display_node, prompt_id}``; sampler steps send
   ``progress`` ``{value, max, prompt_id, node}``, each preceded by a binary PREVIEW_IMAGE
   frame of the step's latent (latent2rgb PNG) when the connection asked for previews;
   after an output node ``executed`` ``{node, display_node, output: {"images": [...]},
   prompt_id}`` (preceded by binary
   PREVIEW_IMAGE frames of its PNGs when the connection asked for previews)
5. ``execution_success`` ``{prompt_id, timestamp}``, or ``execution_error`` /
   ``execution_interrupted``
6. the history entry is written and a ``status`` broadcast goes out (ComfyUI's task_done)
7. ``executing`` ``{node: null, prompt_id}`` — the "done" signal clients wait for.

Every message a prompt sends carries ``comfyc_tier`` (``torch`` or ``artifact``: which tier
ran it; an extra field ComfyUI clients ignore), and so does its history entry's ``comfyc``.
A finished prompt logs one line to ``comfyc.serve.prompts`` (id, graph hash, tier, seconds,
outcome) and adds to the hub's metrics.

A failing prompt never kills its worker: every error becomes ``execution_error`` and an
``error`` history entry, whose message and traceback name no server folder (the engine's
:class:`~.redact.Redactor` labels them). One worker runs the prompts of one model key
(``comfyc serve``) or everything its Ray replica claims. Concurrent SaveImage ops of several
workers (or replicas) never overwrite each other's files: the runtime's save takes a lock on
the output folder and never replaces a file (:mod:`comfyc.runtime.image_io`).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from .hub import Job, now_ms

_log = logging.getLogger(__name__)
#: One line per finished prompt (id, graph hash, tier, seconds, outcome); ``comfyc serve``
#: shows it on stderr.
PROMPT_LOG = logging.getLogger("comfyc.serve.prompts")
_STAGE_KIND = re.compile(r"(unet|text_encoder_2|text_encoder|vae_decoder|vae_encoder)")

__all__ = ["PNG", "PREVIEW_IMAGE", "PROMPT_LOG", "Interrupted", "Worker", "WorkerPool",
           "run_job"]

#: Binary frame header fields (ComfyUI's ``BinaryEventTypes.PREVIEW_IMAGE``, format 2 = PNG).
PREVIEW_IMAGE = 1
PNG = 2


class Interrupted(Exception):
    """The running prompt was interrupted (POST /interrupt)."""


def run_job(job: Job, hub: Any, engine: Any, output_dir: Path, owner: str) -> bool:
    """Run one claimed prompt and report it; returns whether its result was recorded."""
    from comfyc.runtime.program import ProgramError

    pid, client = job.prompt_id, job.client_id
    messages: list[list[Any]] = []
    claimed = time.time()
    graph = engine.shape_key(job.prompt)
    try:
        tier = engine.tier_for(job.prompt)
    except Exception:  # noqa: BLE001 - only a label; prepare() reports what is wrong
        tier = "artifact"

    def record(event: str, data: dict[str, Any]) -> None:
        # NOTE: `comfyc_tier` is comfyc's own field on ComfyUI's messages (clients ignore
        # fields they do not know): which tier ran the prompt.
        data = {**data, "comfyc_tier": tier, "timestamp": now_ms()}
        messages.append([event, data])
        hub.send(event, data, client)

    record("execution_start", {"prompt_id": pid})
    outputs: dict[str, Any] = {}
    executed: list[str] = []
    current: dict[str, Any] = {"node": None, "type": None, "files_seen": set()}
    # NOTE: previews for connections that asked (?preview=png), and for prompts whose
    # page asked (ComfyUI's extra_data.preview_method, set from the page's settings).
    method = (job.extra_data or {}).get("preview_method")
    previews = client is not None and (hub.wants_previews(client) or method in (
        "auto", "latent2rgb", "taesd"))
    redact = engine.redactor.text

    def check_interrupt() -> None:
        if hub.is_interrupted(pid):
            raise Interrupted

    def flush_outputs(written: dict[str, list[dict[str, Any]]]) -> None:
        """Send `executed` for output nodes whose files appeared since the last op."""
        for node_id, files in written.items():
            if node_id in current["files_seen"]:
                continue
            current["files_seen"].add(node_id)
            outputs[node_id] = {"images": list(files)}
            if previews:
                for entry in files:
                    folder = output_dir / ("temp" if entry.get("type") == "temp" else "")
                    path = folder / entry.get("subfolder", "") / entry["filename"]
                    try:
                        body = path.read_bytes()
                    except OSError:
                        continue
                    hub.send(None, struct.pack(">II", PREVIEW_IMAGE, PNG) + body, client,
                             preview=True)
            hub.send("executed", {"node": node_id, "display_node": node_id,
                                  "output": outputs[node_id], "prompt_id": pid,
                                  "comfyc_tier": tier}, client)

    def on_op(op: Any, ctx: Any) -> None:
        flush_outputs(ctx.files)
        check_interrupt()
        if op.id != current["node"]:
            if current["node"] is not None:
                executed.append(current["node"])
            current["node"], current["type"] = op.id, op.op
            hub.send("executing", {"node": op.id, "display_node": op.id, "prompt_id": pid},
                     client)

    def progress(label: str, step: int, total: int) -> None:
        hub.send("progress", {"value": step, "max": total, "prompt_id": pid,
                              "node": current["node"]}, client)
        check_interrupt()

    def preview(x0: Any) -> None:
        # ComfyUI sends a latent preview per step; latent2rgb costs microseconds.
        from comfyc.runtime.preview import preview_png

        hub.send(None, struct.pack(">II", PREVIEW_IMAGE, PNG) + preview_png(x0), client,
                 preview=True)

    def say(message: str) -> None:
        hub.send("comfyc.compile", {"prompt_id": pid, "message": redact(message)}, client)

    status, ok, outcome = "success", True, "success"
    times: dict[str, float] = {}
    stages: dict[str, float] = {}
    started = time.perf_counter()
    prepared = None
    try:
        prepared = engine.prepare(job.prompt, say)
        tier = prepared.tier
        times["prepare_s"] = time.perf_counter() - started
        record("execution_cached", {"nodes": prepared.cached_nodes, "prompt_id": pid})
        program = prepared.program
        with engine.run_lock(prepared.lock_key):
            # NOTE: SaveImage embeds the prompt as the client sent it (ComfyUI's hidden
            # PROMPT input) and the client's extra_pnginfo (the UI workflow).
            program.meta["prompt"] = job.prompt
            program.meta["extra_pnginfo"] = (job.extra_data or {}).get("extra_pnginfo")
            own = (job.extra_data or {}).get("comfyc")
            mode = own.get("noise_mode") if isinstance(own, dict) else None
            result = program.run(prepared.params, output_dir=output_dir,
                                 input_dir=engine.input_dir, progress=progress, on_op=on_op,
                                 preview=preview if previews else None,
                                 noise_mode=mode or engine.noise_mode,
                                 models_dir=engine.models_dir)
        times["run_s"] = result.timings["total_s"]
        stages = _stage_seconds(result.timings.get("stages") or {})
        if current["node"] is not None:
            executed.append(current["node"])
        flush_outputs(result.files)  # the last op's outputs: no later op flushed them
        record("execution_success", {"prompt_id": pid})
    except BaseException as exc:  # every failure is reported; none kills the worker
        ok = False
        status = "error"
        cause = exc.__cause__ if isinstance(exc, ProgramError) else None
        base = {"prompt_id": pid, "node_id": current["node"], "node_type": current["type"],
                "executed": executed}
        if isinstance(exc, Interrupted) or isinstance(cause, Interrupted):
            outcome = "interrupted"
            record("execution_interrupted", base)
        else:
            outcome = "error"
            record("execution_error", {
                **base, "exception_message": redact(_message(exc)),
                "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "traceback": [redact(line) for line in traceback.format_exception(exc)[-6:]],
                "current_inputs": {}, "current_outputs": {}})
        if not isinstance(exc, Exception):
            raise
    finally:
        if prepared is not None:
            prepared.release()
    entry = {
        "prompt": job.queue_item(),
        "outputs": outputs,
        "status": {"status_str": status, "completed": ok, "messages": messages},
        "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                 for n in outputs},
        # NOTE: comfyc's own facts, beside ComfyUI's keys (clients ignore unknown keys).
        "comfyc": {"worker": owner, "attempt": job.attempts, "tier": tier, "graph": graph,
                   "total_s": time.perf_counter() - started, **times},
    }
    recorded = hub.finish(owner, pid, entry)
    total = time.perf_counter() - started
    if recorded:
        # NOTE: a worker whose lease expired (it stalled and another took the prompt over)
        # stays quiet: the "done" signal comes from the worker whose result was recorded.
        hub.send("executing", {"node": None, "prompt_id": pid}, client)
        # One line per prompt, in logfmt (what an operator greps and a log shipper parses).
        PROMPT_LOG.info("prompt=%s graph=%s tier=%s seconds=%.3f outcome=%s attempt=%d",
                        pid, graph, tier, total, outcome, job.attempts)
        created = (job.extra_data or {}).get("create_time")
        queued = max(0.0, claimed - created / 1000) if isinstance(created, (int, float)) \
            else None
        try:
            hub.record("prompt", {"outcome": outcome, "tier": tier, "seconds": {
                **({"queue": queued} if queued is not None else {}),
                **({"prepare": times["prepare_s"]} if "prepare_s" in times else {}),
                **({"run": times["run_s"]} if "run_s" in times else {}),
                **stages, "total": total}})
        except Exception:  # noqa: BLE001 - metrics never fail a prompt
            _log.debug("recording metrics failed", exc_info=True)
    return recorded


def _stage_seconds(stages: dict[str, Any]) -> dict[str, float]:
    """Seconds per model stage kind (``unet``, ``text_encoder``, ``vae_decoder`` …) of a run's
    stage timings, whose names carry a model hash (``unet_3fa2…``)."""
    out: dict[str, float] = {}
    for name, facts in stages.items():
        kind = _STAGE_KIND.match(name)
        label = kind.group(1) if kind else name.split("_")[0]
        out[label] = out.get(label, 0.0) + float(facts.get("total_s", 0.0))
    return out


def _message(exc: BaseException) -> str:
    """A person-readable message: comfyc errors render with their location and fix."""
    render = getattr(exc, "render", None)
    if callable(render):
        try:
            return str(render())
        except Exception:  # noqa: BLE001 - fall back to str() below
            _log.debug("render() failed", exc_info=True)
    return str(exc) or type(exc).__name__


class Worker(threading.Thread):
    """A thread that claims prompts (of one model key, or any) and runs them.

    Args:
        hub: The hub (in-process, or a proxy to the Ray actor).
        engine: Compiles and loads programs.
        output_dir: Where outputs are written.
        owner: The lease owner name (unique per worker).
        key: Claim only prompts of this model key (None: any).
        idle_exit_s: Exit after this long without work (None: never).
    """

    def __init__(self, hub: Any, engine: Any, output_dir: Path, owner: str,
                 key: str | None = None, idle_exit_s: float | None = None) -> None:
        super().__init__(name=f"comfyc-worker-{owner}", daemon=True)
        self.hub, self.engine, self.output_dir = hub, engine, output_dir
        self.owner, self.key, self.idle_exit_s = owner, key, idle_exit_s
        self.stop = threading.Event()
        self.busy = False

    def run(self) -> None:
        idle_since = time.monotonic()
        beat = _Heartbeat(self.hub, self.owner, self.hub_lease_s())
        beat.start()
        try:
            while not self.stop.is_set():
                # NOTE: a request id per claim: retried after the hub's process died, the
                # claim gets the prompt it leased instead of leaving that one stranded.
                job = self.hub.claim(self.owner, self.key, 1.0, uuid.uuid4().hex)
                if job is None:
                    if self.idle_exit_s and time.monotonic() - idle_since > self.idle_exit_s:
                        return
                    continue
                if isinstance(job, dict):
                    job = Job.from_json(job)
                self.busy = True
                try:
                    run_job(job, self.hub, self.engine, self.output_dir, self.owner)
                except Exception:  # noqa: BLE001 - the hub itself failed; try again later
                    _log.exception("worker %s: reporting a prompt failed", self.owner)
                    time.sleep(0.5)
                finally:
                    self.busy = False
                    idle_since = time.monotonic()
                if self.hub.take_flags():
                    self.engine.free()
        finally:
            beat.stop.set()

    def hub_lease_s(self) -> float:
        lease = getattr(self.hub, "lease_s", None)
        return float(lease) if isinstance(lease, (int, float)) else 30.0


class _Heartbeat(threading.Thread):
    """Keeps a worker's leases alive, also while it compiles for a long time."""

    def __init__(self, hub: Any, owner: str, lease_s: float) -> None:
        super().__init__(name=f"comfyc-heartbeat-{owner}", daemon=True)
        self.hub, self.owner, self.period = hub, owner, max(0.2, lease_s / 4)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                self.hub.heartbeat(self.owner)
            except Exception:  # noqa: BLE001 - a hub hiccup; the next beat tries again
                _log.debug("heartbeat of %s failed", self.owner, exc_info=True)


class WorkerPool:
    """One worker per model key, started when a prompt of that key is queued."""

    def __init__(self, hub: Any, engine: Any, output_dir: Path) -> None:
        self.hub, self.engine, self.output_dir = hub, engine, output_dir
        self.workers: dict[str, Worker] = {}
        self.lock = threading.Lock()

    def ensure(self, key: str) -> None:
        """Start the worker of ``key`` unless it runs."""
        with self.lock:
            worker = self.workers.get(key)
            if worker is None or not worker.is_alive():
                worker = Worker(self.hub, self.engine, self.output_dir,
                                f"{os.getpid()}:{len(self.workers)}:{key}", key)
                self.workers[key] = worker
                worker.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every worker (each finishes its current prompt's bookkeeping)."""
        for worker in self.workers.values():
            worker.stop.set()
        for worker in self.workers.values():
            worker.join(timeout)
