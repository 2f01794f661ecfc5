"""The durable record of accepted prompts: a small SQLite file in the server's cache folder.

A prompt is written here *before* ``POST /prompt`` answers 200, and its row follows it through
``pending`` → ``running`` → ``done`` (with its history entry). When the server is killed
(``kill -9``, a crash, a power cut of the process) the rows survive, and the next server
started on the same store (same cache folder, same address) finds them:

* ``pending`` prompts are queued again, in their old order;
* ``running`` prompts (the ones the dead server was executing) are queued again at the front,
  unless they were already running at :data:`MAX_RESTARTS` earlier deaths — a prompt that
  takes the server down every time is then recorded as ``lost``, with an error history entry
  that says so, instead of killing every restart;
* ``done`` prompts keep their history entries (bounded like the in-memory history).

So a client can always tell the state of a prompt it was given an id for: pending (listed in
``/queue``), finished or lost (in ``/history``, ``status_str`` ``success``/``error``; a lost
one carries an ``execution_error`` of type ``comfyc.lost``), or unknown (never accepted, or
aged out of the history).

With ``adopt=True`` (the hub of ``comfyc serve --ray``, restarted by Ray after its process
died while the replicas' workers live on) a ``running`` prompt is *not* a death: it keeps its
lease owner and claim (both are in its row), so the worker that runs it finishes it, once.

SQLite in WAL mode: a committed transaction survives the process being killed at any point.
One process owns a store at a time (an exclusive lock on ``FILE.lock``, which the kernel
drops when its owner dies); a second server started on the same store refuses to start
instead of running the same prompts twice (a restarted hub waits for the lock instead).
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["MAX_RESTARTS", "PromptStore", "Recovered", "StoreLockedError"]

#: A prompt that was running when the server died this many times is not run again.
MAX_RESTARTS = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    number REAL NOT NULL,
    state TEXT NOT NULL,            -- pending | running | done
    job TEXT NOT NULL,              -- the queued job (JSON)
    entry TEXT,                     -- the history entry (JSON), once done
    entry_bytes INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    accepted REAL NOT NULL,
    finished REAL,
    owner TEXT,                     -- the worker holding the lease, while running
    claim TEXT                      -- the claim request that leased it (a retried claim)
);
CREATE INDEX IF NOT EXISTS prompts_state ON prompts (state, seq);
"""
#: Columns added after the first layout (a store written by an older server gains them).
_ADDED_COLUMNS = (("owner", "TEXT"), ("claim", "TEXT"))


class StoreLockedError(RuntimeError):
    """Another live server owns the store."""


class Recovered:
    """What a restarted server takes over from the store.

    Attributes:
        queued: Jobs (as :meth:`~.hub.Job.to_json` data) to queue again, in run order; the
            ones that were running come first.
        history: ``(prompt_id, entry, entry_bytes)`` of finished prompts, oldest first.
        lost: Jobs that were running at too many deaths; the caller records them as errors.
        interrupted: How many of ``queued`` were running when the server died.
        running: ``(job, owner, claim)`` of prompts still leased to live workers (``adopt``).
    """

    def __init__(self) -> None:
        self.queued: list[dict[str, Any]] = []
        self.history: list[tuple[str, dict[str, Any], int]] = []
        self.lost: list[dict[str, Any]] = []
        self.interrupted = 0
        self.running: list[tuple[dict[str, Any], str, str]] = []


class PromptStore:
    """Accepted prompts and their outcomes, on disk (thread-safe).

    Args:
        path: The SQLite file (created with its folder).
        lock_wait_s: Seconds to wait for the store's lock (a restarted hub waits for its
            dead predecessor's to be dropped); 0: refuse at once.

    Raises:
        StoreLockedError: Another process has the store open.
    """

    def __init__(self, path: str | Path, lock_wait_s: float = 0.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._owner = open(self.path.with_name(self.path.name + ".lock"), "a+b")  # noqa: SIM115
        end = time.monotonic() + lock_wait_s
        while True:
            try:
                fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() < end:
                    time.sleep(0.1)
                    continue
                self._owner.close()
                raise StoreLockedError(
                    f"another comfyc serve is using the prompt store {self.path.name} in "
                    f"this cache folder; stop it, or give this server another --port or "
                    f"--cache-dir") from None
        self._lock = threading.Lock()
        # NOTE: one connection shared by the server's threads under a lock; autocommit mode
        # (isolation_level None) with explicit transactions where several rows change.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NOTE: NORMAL syncs at checkpoints, not per commit: a killed process loses nothing
        # (the WAL is in the OS's cache); only a power cut could lose the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(prompts)")}
        for name, kind in _ADDED_COLUMNS:
            if name not in present:
                self._db.execute(f"ALTER TABLE prompts ADD COLUMN {name} {kind}")

    def close(self) -> None:
        """Close the database and give up ownership."""
        with self._lock:
            self._db.close()
            self._owner.close()

    # ------------------------------------------------------------------ writes
    def add(self, job: dict[str, Any]) -> None:
        """Record an accepted prompt (before the client is told it was queued)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO prompts (prompt_id, seq, number, state, job, accepted)"
                " VALUES (?, ?, ?, 'pending', ?, ?)",
                (job["prompt_id"], job["seq"], float(job["number"]), json.dumps(job),
                 time.time()))

    def set_state(self, prompt_id: str, state: str, owner: str | None = None,
                  claim: str | None = None) -> None:
        """Mark a prompt ``pending`` (given back) or ``running`` (claimed by ``owner`` with
        the claim request ``claim``)."""
        with self._lock:
            self._db.execute("UPDATE prompts SET state = ?, owner = ?, claim = ? "
                             "WHERE prompt_id = ?", (state, owner, claim, prompt_id))

    def finish(self, prompt_id: str, entry: dict[str, Any], size: int) -> None:
        """Record a prompt's history entry (it will not run again)."""
        with self._lock:
            self._db.execute(
                "UPDATE prompts SET state = 'done', entry = ?, entry_bytes = ?, finished = ? "
                "WHERE prompt_id = ?", (json.dumps(entry), size, time.time(), prompt_id))

    def forget(self, prompt_ids: list[str]) -> None:
        """Drop prompts (deleted from the queue, or aged out of / deleted from the history)."""
        if not prompt_ids:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM prompts WHERE prompt_id = ?",
                                 [(pid,) for pid in prompt_ids])
            self._db.execute("COMMIT")

    def forget_state(self, state: str) -> None:
        """Drop every prompt in one state (``pending``: the queue was cleared; ``done``: the
        history was cleared)."""
        with self._lock:
            self._db.execute("DELETE FROM prompts WHERE state = ?", (state,))

    # ------------------------------------------------------------------ reads
    def known(self, prompt_id: str) -> bool:
        """Whether a prompt with this id was accepted and not forgotten."""
        return self.job(prompt_id) is not None

    def job(self, prompt_id: str) -> dict[str, Any] | None:
        """The accepted job of a prompt id (as :meth:`add` stored it), or None."""
        with self._lock:
            row = self._db.execute("SELECT job FROM prompts WHERE prompt_id = ?",
                                   (prompt_id,)).fetchone()
        return json.loads(row[0]) if row is not None else None

    def recover(self, max_history: int, *, adopt: bool = False) -> Recovered:
        """Take over what a previous server left: see the module docstring.

        Rows of running prompts get one more restart counted; prompts past
        :data:`MAX_RESTARTS` are returned in :attr:`Recovered.lost` (the caller records their
        error entries with :meth:`finish`). With ``adopt``, running prompts with a lease
        owner stay running (:attr:`Recovered.running`): their workers outlived the hub.
        """
        out = Recovered()
        with self._lock:
            self._db.execute("BEGIN")
            running = self._db.execute(
                "SELECT prompt_id, job, restarts, owner, claim FROM prompts "
                "WHERE state = 'running' ORDER BY seq").fetchall()
            for prompt_id, job, restarts, owner, claim in running:
                data = json.loads(job)
                if adopt and owner:
                    data["attempts"] = max(int(data.get("attempts") or 0), 1)
                    out.running.append((data, owner, claim or ""))
                    continue
                # NOTE: the claim that died counts as an attempt (the history entry of the
                # re-run then says attempt 2).
                data["attempts"] = int(data.get("attempts") or 0) + restarts + 1
                if restarts + 1 >= MAX_RESTARTS:
                    out.lost.append(data)
                    continue
                self._db.execute("UPDATE prompts SET state = 'pending', restarts = ? "
                                 "WHERE prompt_id = ?", (restarts + 1, prompt_id))
                out.queued.append(data)
                out.interrupted += 1
            pending = self._db.execute(
                "SELECT job FROM prompts WHERE state = 'pending' ORDER BY number, seq"
            ).fetchall()
            seen = {job["prompt_id"] for job in out.queued}
            out.queued += [d for (job,) in pending if (d := json.loads(job))["prompt_id"]
                           not in seen]
            done = self._db.execute(
                "SELECT prompt_id, entry, entry_bytes FROM prompts WHERE state = 'done' "
                "ORDER BY finished DESC, seq DESC LIMIT ?", (max_history,)).fetchall()
            out.history = [(pid, json.loads(entry), size) for pid, entry, size in reversed(done)]
            # Finished prompts beyond the history's length are gone for good.
            self._db.execute(
                "DELETE FROM prompts WHERE state = 'done' AND prompt_id NOT IN "
                "(SELECT prompt_id FROM prompts WHERE state = 'done' "
                "ORDER BY finished DESC, seq DESC LIMIT ?)", (max_history,))
            self._db.execute("COMMIT")
        return out

    def counts(self) -> dict[str, int]:
        """Prompts per state (for tests and ``/system_stats``)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM prompts GROUP BY state")
            return {state: n for state, n in rows}
