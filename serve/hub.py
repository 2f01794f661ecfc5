"""The hub: queue, leases, history and the websocket event log of a comfyc server.

Everything a ComfyUI client can observe lives here, behind one lock, as plain JSON-able
data: pending prompts (a heap ordered like ComfyUI's: ``number`` then arrival; ``front``
queues with a negative number), running prompts with the worker that holds them, the
bounded history, interrupt requests, and a bounded log of websocket messages that each
connection reads from its own cursor.

Workers *lease* prompts (:meth:`Hub.claim`) and keep the lease alive with
:meth:`Hub.heartbeat`; a worker that dies (a killed Ray replica) stops heart-beating and its
prompts go back to the front of the queue after ``lease_s``, so a prompt the client was told
was queued is never lost. The same class runs in-process for ``comfyc serve`` and inside one
Ray actor shared by all replicas for ``comfyc serve --ray``.

With a store (:class:`~.store.PromptStore`, a file in the cache folder) the queue and the
history also survive the server process: every accepted prompt is on disk before its id is
returned, and a hub started on the store takes over what its predecessor left (see
:mod:`.store`).

Everything an unauthenticated client can make the hub hold is bounded: pending prompts (count
and bytes: a full queue answers 429), history entries (count and bytes: the oldest go first),
websocket messages kept for late readers (count and bytes). A prompt id is never reused: a
client-chosen id that is pending, running or in the history is refused, so no result
overwrites another's and every client gets its own ``executing {node: null}``.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .redact import dumps

__all__ = ["MAX_HISTORY", "MAX_HISTORY_BYTES", "MAX_PENDING", "MAX_PENDING_BYTES", "Hub", "Job",
           "now_ms"]

#: History entries kept (ComfyUI keeps 10000; prompts and outputs are small).
MAX_HISTORY = 1000
#: History bytes kept (entries as JSON; a prompt may be megabytes): the oldest go first.
MAX_HISTORY_BYTES = 128 * 1024 * 1024
#: Pending prompts: more are refused (429) until the queue drains.
MAX_PENDING = 10000
#: Pending prompt bytes (as sent): more are refused (429).
MAX_PENDING_BYTES = 512 * 1024 * 1024
#: Websocket messages kept for connections that read late.
MAX_EVENTS = 20000
#: Bytes of websocket messages kept (binary previews can be large).
MAX_EVENT_BYTES = 64 * 1024 * 1024
#: The size a JSON message is counted as (they are small; measuring each would cost more).
_JSON_EVENT_BYTES = 256


def now_ms() -> int:
    """Milliseconds since the epoch (ComfyUI's ``timestamp``)."""
    return int(time.time() * 1000)


@dataclass
class Job:
    """One queued prompt.

    Attributes:
        number: ComfyUI's queue number (lower runs first; ``front`` makes it negative).
        prompt_id: The id returned to the client.
        prompt: The API prompt as sent.
        extra_data: ``extra_data`` as sent (``client_id`` added, as ComfyUI does).
        outputs: Output node ids to execute (ComfyUI's ``outputs_to_execute``).
        client_id: Where websocket messages go (None: nobody).
        model_key: Jobs with one key run on one worker, one at a time.
        seq: Arrival order, the tie-breaker.
        attempts: How often a worker claimed it (more than once after a worker died).
        size: Its size as sent, in bytes (the pending queue is bounded by bytes).
        request_id: The submitting request's id: a retried submit (Ray retries a call whose
            actor died) is answered with the first one's result instead of queued twice.
    """

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    client_id: str | None
    model_key: str
    seq: int = 0
    attempts: int = 0
    size: int = 0
    request_id: str = ""

    def queue_item(self) -> list[Any]:
        """ComfyUI's 5-element queue item ``[number, prompt_id, prompt, extra_data, outputs]``."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    def to_json(self) -> dict[str, Any]:
        """The job as plain data (for Ray)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        """Rebuild a job from :meth:`to_json`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclass
class _Lease:
    job: Job
    owner: str
    deadline: float
    claim: str = ""


@dataclass
class _Event:
    seq: int
    target: str | None
    message: Any  # a dict (JSON text frame) or bytes (binary frame)
    preview: bool = False
    size: int = _JSON_EVENT_BYTES


@dataclass
class Hub:
    """Queue, history and events of one server (thread-safe).

    Args:
        max_history: History entries kept; the oldest go first.
        lease_s: Seconds a claimed prompt stays with a worker that stopped heart-beating.
        max_history_bytes: History bytes kept (entries as JSON).
        max_pending: Pending prompts accepted; more are refused until the queue drains.
        max_pending_bytes: Pending prompt bytes accepted.
        store_path: The durable store (None: the queue lives in memory only). A hub given a
            store takes over the prompts and history a previous server left in it.
        adopt_running: Take over the running prompts' leases from the store as they were
            (the hub of ``--ray``, restarted by Ray while the workers live on); without it a
            prompt running at the previous hub's end is queued again (its worker died too).
        lock_wait_s: Seconds to wait for the store's lock (a restarted hub's predecessor
            may still be going away).
    """

    max_history: int = MAX_HISTORY
    lease_s: float = 30.0
    max_history_bytes: int = MAX_HISTORY_BYTES
    max_pending: int = MAX_PENDING
    max_pending_bytes: int = MAX_PENDING_BYTES
    store_path: str | None = None
    adopt_running: bool = False
    lock_wait_s: float = 0.0
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _pending: list[tuple[float, int, Job]] = field(default_factory=list)
    _pending_bytes: int = 0
    _running: dict[str, _Lease] = field(default_factory=dict)
    _history: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    _history_sizes: dict[str, int] = field(default_factory=dict)
    _history_bytes: int = 0
    _events: deque[_Event] = field(default_factory=deque)
    _event_bytes: int = 0
    _event_seq: int = 0
    _number: int = 0
    _arrivals: int = 0
    _interrupts: set[str] = field(default_factory=set)
    _flags: dict[str, Any] = field(default_factory=dict)
    _wakers: list[Callable[[], None]] = field(default_factory=list)
    _owners: dict[str, float] = field(default_factory=dict)
    _preview_clients: set[str] = field(default_factory=set)
    _store: Any = None
    _recovered: dict[str, int] = field(default_factory=dict)
    _metrics: Any = None

    def __post_init__(self) -> None:
        from .metrics import Metrics

        self._metrics = Metrics()
        # NOTE: cursors from the wall clock (microseconds): a connection that read from a
        # hub before it restarted keeps a cursor below every message of the new one.
        self._event_seq = time.time_ns() // 1000
        if self.store_path is not None:
            from .store import PromptStore

            self._store = PromptStore(self.store_path, self.lock_wait_s)
            self._recover()

    def _recover(self) -> None:
        """Queue again what the store holds from a previous server; restore its history."""
        recovered = self._store.recover(self.max_history, adopt=self.adopt_running)
        deadline = time.monotonic() + self.lease_s
        for data, owner, claim in recovered.running:
            job = Job.from_json(data)
            # NOTE: a fresh lease: a live owner heart-beats it; a dead one lets it expire
            # and the prompt is queued again, as when a worker dies under a running hub.
            self._running[job.prompt_id] = _Lease(job, owner, deadline, claim)
        for pid, entry, size in recovered.history:
            self._remember(pid, entry, size, persist=False)
        for data in recovered.lost:
            job = Job.from_json(data)
            entry = _lost_entry(job)
            self._remember(job.prompt_id, entry, len(dumps(entry)))
        for index, data in enumerate(recovered.queued):
            job = Job.from_json(data)
            if index < recovered.interrupted:
                # NOTE: the prompts the dead server was running go first, as a dead worker's
                # do (their clients have waited longest).
                job.number = min([-self._number - 1] + [e[0] for e in self._pending]) - 1
            self._pending.append((job.number, job.seq, job))
            self._pending_bytes += job.size
        heapq.heapify(self._pending)
        jobs = [j for _, _, j in self._pending] + [lease.job for lease in
                                                   self._running.values()]
        numbers = [int(j.number) for j in jobs if j.number >= 0]
        seqs = [j.seq for j in jobs]
        self._number = max(numbers, default=-1) + 1
        self._arrivals = max(seqs, default=0)
        self._recovered = {"queued": len(recovered.queued), "restarted": recovered.interrupted,
                           "lost": len(recovered.lost), "history": len(recovered.history)}
        if recovered.running:
            self._recovered["adopted"] = len(recovered.running)

    def pid(self) -> int:
        """The hub's process id (the Ray test kills it)."""
        return os.getpid()

    def recovered(self) -> dict[str, int]:
        """What this hub took over from its store: queued, restarted, lost, history."""
        with self._lock:
            return dict(self._recovered)

    def close(self) -> None:
        """Close the store (the server is stopping).

        Prompts still running are given back as pending: an orderly stop is not one of the
        deaths that make a prompt count as lost.
        """
        with self._lock:
            if self._store is not None:
                for prompt_id in self._running:
                    self._store.set_state(prompt_id, "pending")
                self._store.close()
                self._store = None

    # ------------------------------------------------------------------ queue
    def submit(self, prompt: dict[str, Any], extra_data: dict[str, Any], outputs: list[str],
               client_id: str | None, model_key: str, *, front: bool = False,
               number: float | None = None, prompt_id: str | None = None,
               size: int = 0, request_id: str = "") -> dict[str, Any]:
        """Queue a validated prompt.

        ``request_id`` makes the call idempotent: a submit with the id and request of a
        prompt already accepted (the same call, retried after the hub's process died) is
        answered as the first time.

        Returns:
            ``{"number", "prompt_id"}`` as ComfyUI answers; or ``{"error": kind, "message"}``
            when the id is taken (``duplicate_prompt_id``) or the queue is full
            (``queue_full``).
        """
        with self._lock:
            if prompt_id is not None and request_id:
                earlier = self._job_of(prompt_id)
                if earlier is not None and earlier.request_id == request_id:
                    return {"number": earlier.number, "prompt_id": prompt_id}
            if prompt_id is not None and self._known(prompt_id):
                return {"error": "duplicate_prompt_id", "message": (
                    f"prompt_id {prompt_id!r} is already queued or in the history; each "
                    "prompt needs its own id (or send none and use the one returned)")}
            if len(self._pending) >= self.max_pending or \
                    self._pending_bytes + size > self.max_pending_bytes:
                return {"error": "queue_full", "message": (
                    f"the queue is full ({len(self._pending)} prompts, "
                    f"{self._pending_bytes // 2**20} MiB waiting); try again when it drains")}
            if number is None:
                number = -self._number if front else self._number
                self._number += 1
            self._arrivals += 1
            job = Job(number, prompt_id or str(uuid.uuid4()), prompt, extra_data, outputs,
                      client_id, model_key, self._arrivals, size=size, request_id=request_id)
            if self._store is not None:
                # NOTE: on disk before the client hears "queued": a kill now loses nothing.
                self._store.add(job.to_json())
            heapq.heappush(self._pending, (job.number, job.seq, job))
            self._pending_bytes += job.size
            self._queue_updated()
            self._lock.notify_all()
            return {"number": job.number, "prompt_id": job.prompt_id}

    def _job_of(self, prompt_id: str) -> Job | None:
        """The accepted job of an id: pending, running, or in the store; lock held."""
        lease = self._running.get(prompt_id)
        if lease is not None:
            return lease.job
        found = next((job for _, _, job in self._pending if job.prompt_id == prompt_id), None)
        if found is None and self._store is not None:
            data = self._store.job(prompt_id)
            found = Job.from_json(data) if data is not None else None
        return found

    def _known(self, prompt_id: str) -> bool:
        """Whether an id is pending, running or in the history (or the store); lock held."""
        if prompt_id in self._running or prompt_id in self._history:
            return True
        if any(job.prompt_id == prompt_id for _, _, job in self._pending):
            return True
        return self._store is not None and self._store.known(prompt_id)

    def state(self, prompt_id: str) -> str:
        """``pending``, ``running``, ``success``, ``error``, ``lost`` or ``unknown``."""
        with self._lock:
            if prompt_id in self._running:
                return "running"
            if any(job.prompt_id == prompt_id for _, _, job in self._pending):
                return "pending"
            entry = self._history.get(prompt_id)
            if entry is None:
                return "unknown"
            if (entry.get("comfyc") or {}).get("lost"):
                return "lost"
            return str((entry.get("status") or {}).get("status_str") or "unknown")

    def pending_keys(self) -> list[str]:
        """The model keys of pending prompts (a restarted server starts their workers)."""
        with self._lock:
            return sorted({job.model_key for _, _, job in self._pending})

    def claim(self, owner: str, key: str | None = None, timeout: float = 1.0,
              request_id: str = "") -> Job | None:
        """Take the first pending prompt (of ``key``, when given) and lease it to ``owner``.

        Waits up to ``timeout`` seconds for one; None when nothing came. ``request_id``
        makes the call idempotent: the same claim retried (after the hub's process died
        before answering) gets the prompt the first one leased.
        """
        end = time.monotonic() + timeout
        with self._lock:
            self._owners[owner] = time.monotonic()
            if request_id:
                for lease in self._running.values():
                    if lease.owner == owner and lease.claim == request_id:
                        return lease.job
            while True:
                self._expire()
                for _, _, job in sorted(self._pending, key=lambda e: e[:2]):
                    if key is None or job.model_key == key:
                        self._pending.remove((job.number, job.seq, job))
                        heapq.heapify(self._pending)
                        self._pending_bytes -= job.size
                        job.attempts += 1
                        self._running[job.prompt_id] = _Lease(
                            job, owner, time.monotonic() + self.lease_s, request_id)
                        if self._store is not None:
                            self._store.set_state(job.prompt_id, "running", owner,
                                                  request_id)
                        self._queue_updated()
                        return job
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(min(left, 1.0))

    def heartbeat(self, owner: str) -> None:
        """Keep ``owner``'s leases alive."""
        with self._lock:
            self._owners[owner] = time.monotonic()
            deadline = time.monotonic() + self.lease_s
            for lease in self._running.values():
                if lease.owner == owner:
                    lease.deadline = deadline

    def _expire(self) -> None:
        """Put the prompts of workers that stopped heart-beating back at the front."""
        now = time.monotonic()
        dead = [pid for pid, lease in self._running.items() if lease.deadline < now]
        for pid in dead:
            job = self._running.pop(pid).job
            heapq.heappush(self._pending, (job.number, job.seq, job))
            self._pending_bytes += job.size
            if self._store is not None:
                self._store.set_state(pid, "pending")
        if dead:
            self._queue_updated()
            self._lock.notify_all()

    def finish(self, owner: str, prompt_id: str, entry: dict[str, Any]) -> bool:
        """Record a finished prompt in the history and drop its lease.

        Returns False when the lease had expired and the prompt was handed to another worker
        (that worker's result will be recorded instead).
        """
        size = len(dumps(entry))  # Measured outside the lock: a prompt may be megabytes.
        with self._lock:
            lease = self._running.get(prompt_id)
            if lease is None or lease.owner != owner:
                # The same finish retried after the hub's process died having recorded it
                # is answered as the first time.
                recorded = self._history.get(prompt_id)
                return bool(recorded and (recorded.get("comfyc") or {}).get("worker") == owner)
            del self._running[prompt_id]
            self._interrupts.discard(prompt_id)
            self._remember(prompt_id, entry, size)
            # NOTE: ComfyUI's task_done writes the history, then broadcasts the queue status;
            # clients that stop on `queue_remaining == 0` read the history right after.
            self._queue_updated()
            self._lock.notify_all()
            return True

    def _remember(self, prompt_id: str, entry: dict[str, Any], size: int, *,
                  persist: bool = True) -> None:
        """Add a history entry and drop the oldest beyond the count and byte bounds (the
        newest entry stays even when it alone is larger); lock held."""
        if persist and self._store is not None:
            self._store.finish(prompt_id, entry, size)
        self._history[prompt_id] = entry
        self._history_sizes[prompt_id] = size
        self._history_bytes += size
        dropped = []
        while len(self._history) > 1 and (len(self._history) > self.max_history
                                          or self._history_bytes > self.max_history_bytes):
            old, _ = self._history.popitem(last=False)
            self._history_bytes -= self._history_sizes.pop(old, 0)
            dropped.append(old)
        if dropped and self._store is not None:
            self._store.forget(dropped)

    def queue_remaining(self) -> int:
        """Pending plus running prompts (ComfyUI's ``exec_info.queue_remaining``)."""
        with self._lock:
            return len(self._pending) + len(self._running)

    def status(self) -> dict[str, Any]:
        """The ``status`` payload: ``{"exec_info": {"queue_remaining": N}}``."""
        return {"exec_info": {"queue_remaining": self.queue_remaining()}}

    def queue(self) -> dict[str, Any]:
        """``GET /queue``: running and pending items, pending in run order."""
        with self._lock:
            running = [lease.job.queue_item() for lease in self._running.values()]
            pending = [job.queue_item() for _, _, job in sorted(self._pending,
                                                                key=lambda e: e[:2])]
            return {"queue_running": running, "queue_pending": pending}

    def delete_pending(self, prompt_ids: list[str]) -> int:
        """Remove pending prompts by id; returns how many were removed."""
        with self._lock:
            gone = [e[2] for e in self._pending if e[2].prompt_id in prompt_ids]
            self._pending = [e for e in self._pending if e[2].prompt_id not in prompt_ids]
            heapq.heapify(self._pending)
            self._pending_bytes -= sum(job.size for job in gone)
            if self._store is not None:
                self._store.forget([job.prompt_id for job in gone])
            if gone:
                self._queue_updated()
            return len(gone)

    def clear_pending(self) -> int:
        """Remove every pending prompt."""
        with self._lock:
            removed = len(self._pending)
            self._pending = []
            self._pending_bytes = 0
            if self._store is not None:
                self._store.forget_state("pending")
            self._queue_updated()
            return removed

    # ---------------------------------------------------------------- history
    def history(self, max_items: int | None = None, offset: int = -1) -> dict[str, Any]:
        """``GET /history``: oldest first; ``max_items`` newest ones when offset is -1."""
        with self._lock:
            keys = list(self._history)
            if offset < 0 and max_items is not None:
                offset = max(0, len(keys) - max_items)
            offset = max(0, offset)
            keys = keys[offset:]
            if max_items is not None:
                keys = keys[:max_items]
            return {k: self._history[k] for k in keys}

    def history_of(self, prompt_id: str) -> dict[str, Any]:
        """``GET /history/{id}``: ``{id: entry}``, or ``{}`` when unknown or not finished."""
        with self._lock:
            entry = self._history.get(prompt_id)
            return {prompt_id: entry} if entry is not None else {}

    def delete_history(self, prompt_ids: list[str] | None) -> None:
        """``POST /history``: ``{"delete": [...]}`` (ids) or ``{"clear": true}`` (None)."""
        with self._lock:
            if prompt_ids is None:
                self._history.clear()
                self._history_sizes.clear()
                self._history_bytes = 0
                if self._store is not None:
                    self._store.forget_state("done")
                return
            for pid in prompt_ids:
                if self._history.pop(pid, None) is not None:
                    self._history_bytes -= self._history_sizes.pop(pid, 0)
            if self._store is not None:
                self._store.forget([p for p in prompt_ids if p not in self._running
                                    and not any(j.prompt_id == p for _, _, j in self._pending)])

    # ---------------------------------------------------------------- metrics
    def record(self, kind: str, facts: dict[str, Any]) -> None:
        """Count a finished prompt or background compile (see :mod:`.metrics`)."""
        self._metrics.record(kind, facts)

    def metrics_text(self) -> str:
        """``GET /metrics``: Prometheus text, with the queue depth now."""
        with self._lock:
            pending, running = len(self._pending), len(self._running)
        return self._metrics.render(pending, running)

    # ------------------------------------------------------------------- jobs
    def jobs(self, statuses: list[str] | None = None, workflow_id: str | None = None,
             sort_by: str = "created_at", sort_order: str = "desc", limit: int | None = None,
             offset: int = 0) -> dict[str, Any]:
        """``GET /api/jobs``: queue and history as jobs (:mod:`.jobs`), with pagination."""
        from .jobs import list_jobs

        with self._lock:
            running = [lease.job.queue_item() for lease in self._running.values()]
            pending = [job.queue_item() for _, _, job in sorted(self._pending,
                                                                key=lambda e: e[:2])]
            history = dict(self._history)
        jobs, total = list_jobs(running, pending, history, statuses=statuses,
                                workflow_id=workflow_id, sort_by=sort_by,
                                sort_order=sort_order, limit=limit, offset=offset)
        return {"jobs": jobs, "pagination": {"offset": offset, "limit": limit, "total": total,
                                             "has_more": offset + len(jobs) < total}}

    def job(self, prompt_id: str) -> dict[str, Any] | None:
        """``GET /api/jobs/{id}``: one job with its details, or None."""
        from .jobs import history_job, queue_job

        with self._lock:
            entry = self._history.get(prompt_id)
            lease = self._running.get(prompt_id)
            item = lease.job.queue_item() if lease is not None else None
            pending = next((job.queue_item() for _, _, job in self._pending
                            if job.prompt_id == prompt_id), None)
        if entry is not None:
            return history_job(prompt_id, entry, details=True)
        if item is not None:
            return queue_job(item, "in_progress")
        return queue_job(pending, "pending") if pending is not None else None

    def cancel(self, prompt_ids: list[str]) -> bool:
        """Cancel prompts by id: a pending one leaves the queue, a running one is
        interrupted; finished or unknown ids change nothing. True when one was cancelled."""
        removed = self.delete_pending(prompt_ids)
        with self._lock:
            running = [pid for pid in prompt_ids if pid in self._running]
            self._interrupts.update(running)
        return bool(removed or running)

    # -------------------------------------------------------------- interrupt
    def interrupt(self, prompt_id: str | None = None) -> list[str]:
        """Ask running prompts to stop (all, or the one named); returns their ids."""
        with self._lock:
            targets = [pid for pid in self._running if prompt_id in (None, pid)]
            self._interrupts.update(targets)
            return targets

    def is_interrupted(self, prompt_id: str) -> bool:
        """Whether a stop was asked for this running prompt."""
        with self._lock:
            return prompt_id in self._interrupts

    def set_flags(self, **flags: Any) -> None:
        """``POST /free`` flags, read by workers between prompts."""
        with self._lock:
            self._flags.update(flags)

    def take_flags(self) -> dict[str, Any]:
        """Read and clear the ``/free`` flags."""
        with self._lock:
            flags, self._flags = self._flags, {}
            return flags

    # ----------------------------------------------------------------- events
    def add_waker(self, waker: Callable[[], None]) -> None:
        """Call ``waker()`` (from any thread) whenever a message is sent."""
        with self._lock:
            self._wakers.append(waker)

    def remove_waker(self, waker: Callable[[], None]) -> None:
        """Stop calling a waker."""
        with self._lock:
            if waker in self._wakers:
                self._wakers.remove(waker)

    def send(self, event: str | None, data: Any, target: str | None, *,
             preview: bool = False) -> None:
        """Send a message: ``{"type": event, "data": data}``, or raw bytes when event is None.

        ``target`` None broadcasts; binary ``preview`` frames reach only connections that asked.
        """
        message = data if event is None else {"type": event, "data": data}
        size = len(message) if isinstance(message, (bytes, bytearray)) else _JSON_EVENT_BYTES
        with self._lock:
            self._event_seq += 1
            self._append_event(_Event(self._event_seq, target, message, preview, size))
            wakers = list(self._wakers)
            self._lock.notify_all()
        for waker in wakers:
            waker()

    def want_previews(self, client_id: str, on: bool = True) -> None:
        """Record that a connection asked for binary preview frames (or stopped asking)."""
        with self._lock:
            (self._preview_clients.add if on else self._preview_clients.discard)(client_id)

    def wants_previews(self, client_id: str) -> bool:
        """Whether the client's connection asked for preview frames."""
        with self._lock:
            return client_id in self._preview_clients

    def cursor(self) -> int:
        """The sequence number of the newest message (a new connection starts after it)."""
        with self._lock:
            return self._event_seq

    def read(self, client_id: str, after: int, previews: bool = False,
             timeout: float = 0.0) -> tuple[list[Any], int]:
        """Messages for ``client_id`` after cursor ``after``; returns them and the new cursor.

        Waits up to ``timeout`` seconds when there are none yet.
        """
        end = time.monotonic() + timeout
        with self._lock:
            while True:
                # NOTE: newest first, stopping at the cursor: a read costs the messages it
                # returns, not the whole log.
                out = []
                for event in reversed(self._events):
                    if event.seq <= after:
                        break
                    if event.target in (None, client_id) and (previews or not event.preview):
                        out.append(event.message)
                out.reverse()
                if out or time.monotonic() >= end:
                    return out, self._event_seq
                self._lock.wait(end - time.monotonic())

    def _append_event(self, event: _Event) -> None:
        """Log a message, dropping the oldest beyond the count and byte bounds; lock held."""
        self._events.append(event)
        self._event_bytes += event.size
        while len(self._events) > 1 and (len(self._events) > MAX_EVENTS
                                         or self._event_bytes > MAX_EVENT_BYTES):
            self._event_bytes -= self._events.popleft().size

    def _queue_updated(self) -> None:
        """Broadcast the queue status (ComfyUI's ``queue_updated``); caller holds the lock."""
        self._event_seq += 1
        remaining = len(self._pending) + len(self._running)
        self._append_event(_Event(self._event_seq, None, {
            "type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}}))
        for waker in self._wakers:
            waker()


def _lost_entry(job: Job) -> dict[str, Any]:
    """The history entry of a prompt that was running whenever the server died."""
    from .store import MAX_RESTARTS

    message = (f"the server stopped {MAX_RESTARTS} times while this prompt was running; it "
               "is not run again (it may be what stops the server). Queue it again to retry")
    error = {"prompt_id": job.prompt_id, "node_id": None, "node_type": None, "executed": [],
             "exception_message": message, "exception_type": "comfyc.lost", "traceback": [],
             "current_inputs": {}, "current_outputs": {}, "timestamp": now_ms()}
    return {"prompt": job.queue_item(), "outputs": {},
            "status": {"status_str": "error", "completed": False,
                       "messages": [["execution_error", error]]},
            "meta": {}, "comfyc": {"lost": True, "attempt": job.attempts}}
