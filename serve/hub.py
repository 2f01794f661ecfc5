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
"""

from __future__ import annotations

import dataclasses
import heapq
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_HISTORY", "Hub", "Job", "now_ms"]

#: History entries kept (ComfyUI keeps 10000; prompts and outputs are small).
MAX_HISTORY = 1000
#: Websocket messages kept for connections that read late.
MAX_EVENTS = 20000


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

    def queue_item(self) -> list[Any]:
        """ComfyUI's 5-element queue item ``[number, prompt_id, prompt, extra_data, outputs]``."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    def to_json(self) -> dict[str, Any]:
        """The job as plain data (for Ray)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        """Rebuild a job from :meth:`to_json`."""
        return cls(**data)


@dataclass
class _Lease:
    job: Job
    owner: str
    deadline: float


@dataclass
class _Event:
    seq: int
    target: str | None
    message: Any  # a dict (JSON text frame) or bytes (binary frame)
    preview: bool = False


@dataclass
class Hub:
    """Queue, history and events of one server (thread-safe).

    Args:
        max_history: History entries kept; the oldest go first.
        lease_s: Seconds a claimed prompt stays with a worker that stopped heart-beating.
    """

    max_history: int = MAX_HISTORY
    lease_s: float = 30.0
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _pending: list[tuple[float, int, Job]] = field(default_factory=list)
    _running: dict[str, _Lease] = field(default_factory=dict)
    _history: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    _events: deque[_Event] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    _event_seq: int = 0
    _number: int = 0
    _arrivals: int = 0
    _interrupts: set[str] = field(default_factory=set)
    _flags: dict[str, Any] = field(default_factory=dict)
    _wakers: list[Callable[[], None]] = field(default_factory=list)
    _owners: dict[str, float] = field(default_factory=dict)
    _preview_clients: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------ queue
    def submit(self, prompt: dict[str, Any], extra_data: dict[str, Any], outputs: list[str],
               client_id: str | None, model_key: str, *, front: bool = False,
               number: float | None = None, prompt_id: str | None = None) -> tuple[float, str]:
        """Queue a validated prompt; returns ``(number, prompt_id)`` as ComfyUI does."""
        with self._lock:
            if number is None:
                number = -self._number if front else self._number
                self._number += 1
            self._arrivals += 1
            job = Job(number, prompt_id or str(uuid.uuid4()), prompt, extra_data, outputs,
                      client_id, model_key, self._arrivals)
            heapq.heappush(self._pending, (job.number, job.seq, job))
            self._queue_updated()
            self._lock.notify_all()
            return job.number, job.prompt_id

    def claim(self, owner: str, key: str | None = None, timeout: float = 1.0) -> Job | None:
        """Take the first pending prompt (of ``key``, when given) and lease it to ``owner``.

        Waits up to ``timeout`` seconds for one; None when nothing came.
        """
        end = time.monotonic() + timeout
        with self._lock:
            self._owners[owner] = time.monotonic()
            while True:
                self._expire()
                for _, _, job in sorted(self._pending, key=lambda e: e[:2]):
                    if key is None or job.model_key == key:
                        self._pending.remove((job.number, job.seq, job))
                        heapq.heapify(self._pending)
                        job.attempts += 1
                        self._running[job.prompt_id] = _Lease(job, owner,
                                                              time.monotonic() + self.lease_s)
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
        if dead:
            self._queue_updated()
            self._lock.notify_all()

    def finish(self, owner: str, prompt_id: str, entry: dict[str, Any]) -> bool:
        """Record a finished prompt in the history and drop its lease.

        Returns False when the lease had expired and the prompt was handed to another worker
        (that worker's result will be recorded instead).
        """
        with self._lock:
            lease = self._running.get(prompt_id)
            if lease is None or lease.owner != owner:
                return False
            del self._running[prompt_id]
            self._interrupts.discard(prompt_id)
            self._history[prompt_id] = entry
            while len(self._history) > self.max_history:
                self._history.popitem(last=False)
            # NOTE: ComfyUI's task_done writes the history, then broadcasts the queue status;
            # clients that stop on `queue_remaining == 0` read the history right after.
            self._queue_updated()
            self._lock.notify_all()
            return True

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
            before = len(self._pending)
            self._pending = [e for e in self._pending if e[2].prompt_id not in prompt_ids]
            heapq.heapify(self._pending)
            removed = before - len(self._pending)
            if removed:
                self._queue_updated()
            return removed

    def clear_pending(self) -> int:
        """Remove every pending prompt."""
        with self._lock:
            removed = len(self._pending)
            self._pending = []
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
            for pid in prompt_ids or []:
                self._history.pop(pid, None)

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
        with self._lock:
            self._event_seq += 1
            self._events.append(_Event(self._event_seq, target, message, preview))
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

    def _queue_updated(self) -> None:
        """Broadcast the queue status (ComfyUI's ``queue_updated``); caller holds the lock."""
        self._event_seq += 1
        remaining = len(self._pending) + len(self._running)
        self._events.append(_Event(self._event_seq, None, {
            "type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}}))
        for waker in self._wakers:
            waker()
