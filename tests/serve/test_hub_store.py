"""The hub's bounds and its durable store, without a server (issue #19, items 1, 6, 7, 8, 11).

* history, pending queue and websocket log are bounded by count and by bytes;
* a client-chosen prompt id is never reused;
* a hub started on the store of a killed one queues its prompts again (the running one first),
  keeps its history, and gives up a prompt that was running at every death;
* what the server writes is standard JSON; messages name no server folder; tokens never reach
  a log line.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from comfyc.serve import redact
from comfyc.serve.hub import Hub
from comfyc.serve.store import MAX_RESTARTS, PromptStore, StoreLockedError


def _submit(hub: Hub, prompt_id: str | None = None, size: int = 0,
            text: str = "x") -> dict[str, Any]:
    return hub.submit({"1": {"class_type": "X", "inputs": {"text": text}}}, {}, ["1"], None,
                      "k", prompt_id=prompt_id, size=size)


def _run(hub: Hub, entry: dict[str, Any] | None = None) -> str:
    job = hub.claim("w", timeout=0)
    assert job is not None
    hub.finish("w", job.prompt_id, entry or {"status": {"status_str": "success"}})
    return job.prompt_id


def _crash(hub: Hub) -> None:
    """What kill -9 leaves: the store's rows as they were, its lock released."""
    store = hub._store
    store._db.close()
    store._owner.close()
    hub._store = None


def test_history_is_bounded_by_bytes() -> None:
    """Entries of ~10 KB under a 35 KB budget: the newest three stay, the oldest go."""
    hub = Hub(max_history_bytes=35_000)
    ids = []
    for index in range(6):
        _submit(hub, text=str(index))
        ids.append(_run(hub, {"blob": "x" * 10_000, "status": {"status_str": "success"}}))
    assert list(hub.history()) == ids[-3:]
    assert hub._history_bytes <= 35_000
    big = "y" * 100_000  # One entry larger than the whole budget still stays (the newest).
    _submit(hub)
    newest = _run(hub, {"blob": big})
    assert list(hub.history()) == [newest]


def test_history_is_bounded_by_count() -> None:
    """max_history entries, oldest first out."""
    hub = Hub(max_history=2)
    ids = []
    for _ in range(4):
        _submit(hub)
        ids.append(_run(hub))
    assert list(hub.history()) == ids[-2:]


def test_pending_queue_is_bounded() -> None:
    """More pending prompts (or bytes) than allowed: queue_full until one is taken."""
    hub = Hub(max_pending=2, max_pending_bytes=1000)
    assert "prompt_id" in _submit(hub, size=100)
    assert "prompt_id" in _submit(hub, size=100)
    assert _submit(hub)["error"] == "queue_full"
    hub.claim("w", timeout=0)
    assert _submit(hub, size=950)["error"] == "queue_full"  # 100 + 950 bytes > 1000
    assert "prompt_id" in _submit(hub, size=800)


def test_duplicate_prompt_ids_are_refused() -> None:
    """A pending, running or finished prompt's id cannot be given to another prompt."""
    hub = Hub()
    assert _submit(hub, "mine")["prompt_id"] == "mine"
    assert _submit(hub, "mine")["error"] == "duplicate_prompt_id"
    hub.claim("w", timeout=0)
    assert _submit(hub, "mine")["error"] == "duplicate_prompt_id"
    hub.finish("w", "mine", {"status": {"status_str": "success"}})
    assert _submit(hub, "mine")["error"] == "duplicate_prompt_id"
    assert hub.history_of("mine")["mine"]["status"]["status_str"] == "success"


def test_event_log_is_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Binary preview frames beyond the byte budget push the oldest messages out."""
    from comfyc.serve import hub as hub_module

    monkeypatch.setattr(hub_module, "MAX_EVENT_BYTES", 10_000)
    hub = Hub()
    for _ in range(50):
        hub.send(None, b"\0" * 1000, None, preview=True)
    assert hub._event_bytes <= 10_000 and len(hub._events) <= 10


def test_store_survives_a_crash(tmp_path: Path) -> None:
    """Pending and running prompts are queued again (running first); history is kept."""
    path = tmp_path / "queue.sqlite3"
    hub = Hub(store_path=str(path))
    done = _submit(hub, "done")["prompt_id"]
    _run(hub, {"status": {"status_str": "success"}, "outputs": {}})
    for name in ("a", "b", "c"):
        _submit(hub, name)
    running = hub.claim("w", timeout=0)
    assert running is not None and running.prompt_id == "a"
    _crash(hub)

    again = Hub(store_path=str(path))
    assert again.recovered() == {"queued": 3, "restarted": 1, "lost": 0, "history": 1}
    assert [item[1] for item in again.queue()["queue_pending"]] == ["a", "b", "c"]
    assert again.history_of(done)[done]["status"]["status_str"] == "success"
    assert [again.state(p) for p in ("a", "b", "done", "nope")] == [
        "pending", "pending", "success", "unknown"]
    assert _submit(again, "b")["error"] == "duplicate_prompt_id"
    number = _submit(again)["number"]
    assert number > max(item[0] for item in again.queue()["queue_pending"][:-1])
    assert again.pending_keys() == ["k"]
    again.close()


def test_a_prompt_running_at_every_death_is_reported_lost(tmp_path: Path) -> None:
    """Running at MAX_RESTARTS deaths: an error entry of type comfyc.lost, not run again."""
    path = tmp_path / "queue.sqlite3"
    hub = Hub(store_path=str(path))
    _submit(hub, "poison")
    _submit(hub, "fine")
    for _ in range(MAX_RESTARTS):
        job = hub.claim("w", key=None, timeout=0)
        assert job is not None and job.prompt_id == "poison"
        _crash(hub)
        hub = Hub(store_path=str(path))
    assert hub.recovered()["lost"] == 1
    assert hub.state("poison") == "lost" and hub.state("fine") == "pending"
    entry = hub.history_of("poison")["poison"]
    assert entry["status"]["status_str"] == "error"
    ((kind, error),) = entry["status"]["messages"]
    assert kind == "execution_error" and error["exception_type"] == "comfyc.lost"
    assert [item[1] for item in hub.queue()["queue_pending"]] == ["fine"]
    hub.close()


def test_an_orderly_stop_is_not_a_death(tmp_path: Path) -> None:
    """close() gives running prompts back as pending without counting a restart."""
    path = tmp_path / "queue.sqlite3"
    hub = Hub(store_path=str(path))
    _submit(hub, "long")
    for _ in range(MAX_RESTARTS + 1):
        assert hub.claim("w", timeout=0) is not None
        hub.close()
        hub = Hub(store_path=str(path))
        assert hub.state("long") == "pending"
    hub.close()


def test_deleted_and_cleared_prompts_are_forgotten(tmp_path: Path) -> None:
    """POST /queue delete/clear and POST /history delete/clear reach the store."""
    path = tmp_path / "queue.sqlite3"
    hub = Hub(store_path=str(path))
    for name in ("a", "b", "c"):
        _submit(hub, name)
    hub.delete_pending(["b"])
    _run(hub)
    hub.delete_history(["a"])
    _crash(hub)
    store = PromptStore(path)
    assert store.counts() == {"pending": 1}
    store.close()
    hub = Hub(store_path=str(path))
    hub.clear_pending()
    hub.close()
    store = PromptStore(path)
    assert store.counts() == {}
    store.close()


def test_one_store_one_server(tmp_path: Path) -> None:
    """A second hub on a live hub's store refuses to start."""
    path = tmp_path / "queue.sqlite3"
    hub = Hub(store_path=str(path))
    with pytest.raises(StoreLockedError, match="another comfyc serve"):
        Hub(store_path=str(path))
    hub.close()
    Hub(store_path=str(path)).close()


def test_retried_calls_are_idempotent() -> None:
    """What Ray retries after the hub's process died answers as the first call: the same
    submit queues once, the same claim leases one prompt, the same finish records once."""
    hub = Hub()
    prompt = {"1": {"class_type": "X", "inputs": {}}}
    first = hub.submit(prompt, {}, ["1"], None, "k", prompt_id="p1", request_id="r1")
    assert hub.submit(prompt, {}, ["1"], None, "k", prompt_id="p1", request_id="r1") == first
    assert hub.submit(prompt, {}, ["1"], None, "k", prompt_id="p1",
                      request_id="r2")["error"] == "duplicate_prompt_id"
    hub.submit(prompt, {}, ["1"], None, "k", prompt_id="p2", request_id="r3")
    job = hub.claim("w", timeout=0, request_id="c1")
    assert job is not None and hub.claim("w", timeout=0, request_id="c1") is job
    assert hub.queue_remaining() == 2 and len(hub.queue()["queue_running"]) == 1
    entry = {"status": {"status_str": "success"}, "comfyc": {"worker": "w"}}
    assert hub.finish("w", job.prompt_id, entry) and hub.finish("w", job.prompt_id, entry)
    assert not hub.finish("other", job.prompt_id, entry)
    assert list(hub.history()) == [job.prompt_id]


def test_a_restarted_hub_adopts_the_leases_of_live_workers(tmp_path: Path) -> None:
    """A hub restarted on its store (Ray restarting its actor) keeps running prompts with
    their workers: the worker's retried claim and its finish are accepted, nothing runs
    twice; a lease whose worker is gone too expires and its prompt queues again."""
    path = tmp_path / "queue.sqlite3"
    hub = Hub(store_path=str(path), lease_s=0.5, adopt_running=True)
    for name in ("a", "b", "c"):
        hub.submit({"1": {"class_type": "X", "inputs": {}}}, {}, ["1"], None, "k",
                   prompt_id=name, request_id=f"r-{name}")
    alive = hub.claim("alive", timeout=0, request_id="claim-1")
    gone = hub.claim("gone", timeout=0, request_id="claim-2")
    assert alive is not None and gone is not None
    _crash(hub)

    again = Hub(store_path=str(path), lease_s=0.5, adopt_running=True, lock_wait_s=5)
    assert again.recovered()["adopted"] == 2 and again.recovered()["restarted"] == 0
    assert again.state(alive.prompt_id) == "running"
    retried = again.claim("alive", timeout=0, request_id="claim-1")
    assert retried is not None and retried.prompt_id == alive.prompt_id
    again.heartbeat("alive")
    assert again.finish("alive", alive.prompt_id, {"comfyc": {"worker": "alive"}})
    # The other worker died with the hub: its lease runs out, its prompt is pending again.
    import time

    time.sleep(0.7)
    taken = [again.claim("new", timeout=0) for _ in range(2)]
    assert {j.prompt_id for j in taken if j is not None} == {gone.prompt_id, "c"}
    assert again.history_of(alive.prompt_id)
    # A submit retried after its prompt finished (the store remembers the request).
    assert again.submit({}, {}, ["1"], None, "k", prompt_id=alive.prompt_id,
                        request_id=f"r-{alive.prompt_id}")["prompt_id"] == alive.prompt_id
    again.close()


def test_a_store_of_an_older_server_gains_the_lease_columns(tmp_path: Path) -> None:
    """A store written before leases were kept opens, and its prompts recover."""
    import sqlite3

    path = tmp_path / "queue.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE prompts (prompt_id TEXT PRIMARY KEY, seq INTEGER NOT NULL,
            number REAL NOT NULL, state TEXT NOT NULL, job TEXT NOT NULL, entry TEXT,
            entry_bytes INTEGER NOT NULL DEFAULT 0, restarts INTEGER NOT NULL DEFAULT 0,
            accepted REAL NOT NULL, finished REAL);""")
    job = {"number": 0, "prompt_id": "old", "prompt": {}, "extra_data": {}, "outputs": [],
           "client_id": None, "model_key": "k", "seq": 1}
    db.execute("INSERT INTO prompts VALUES ('old', 1, 0, 'pending', ?, NULL, 0, 0, 0, NULL)",
               (json.dumps(job),))
    db.commit()
    db.close()
    hub = Hub(store_path=str(path))
    assert hub.state("old") == "pending"
    assert hub.claim("w", timeout=0) is not None
    hub.close()


def test_strict_json_in_and_out() -> None:
    """NaN, Infinity and overflowing numbers are refused; output is always standard JSON."""
    for raw in [b'{"cfg": NaN}', b'{"cfg": -Infinity}', b'{"w": 1e400}', b"[Infinity]"]:
        with pytest.raises(redact.NonFiniteNumber):
            redact.loads(raw)
    with pytest.raises(ValueError, match="nested too deeply"):
        redact.loads(b"[" * 100_000)
    assert redact.loads(b'{"cfg": 1e300}') == {"cfg": 1e300}
    text = redact.dumps({"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}})
    assert json.loads(text, parse_constant=pytest.fail) == {"a": None, "b": [None, 1.5],
                                                            "c": {"d": None}}


def test_redactor_hides_server_paths(tmp_path: Path) -> None:
    """Known folders become labels; other absolute paths keep only their file name."""
    out = tmp_path / "srv" / "output"
    r = redact.Redactor({"output": out, "comfyc": Path(redact.__file__).parents[1]})
    text = r.text(f"no file {out}/sub/x.png; see {redact.__file__} and /etc/passwd, "
                  "http://host/a/b.png or a/b/c")
    assert str(tmp_path) not in text and "/etc/" not in text
    assert "<output>/sub/x.png" in text and "<comfyc>/serve/redact.py" in text
    assert "…/passwd" in text and "http://host/a/b.png" in text and "a/b/c" in text
    assert r.value({"k": [f"{out}/y"]}) == {"k": ["<output>/y"]}


def test_token_filter_masks_tokens() -> None:
    """A URL with ?token= in a log record is masked, message and arguments alike."""
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s "GET %s HTTP/1.1"', ("1.2.3.4", "/ws?token=s3cret&x=1"),
                               None)
    assert redact.TokenFilter().filter(record)
    assert "s3cret" not in record.getMessage() and "token=***&x=1" in record.getMessage()


def test_quiet_tokens_masks_every_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """After quiet_tokens(), a URL with a token logged anywhere reaches handlers masked."""
    from comfyc.serve.cli import quiet_tokens

    monkeypatch.setattr(logging, "_logRecordFactory", logging.getLogRecordFactory())
    quiet_tokens()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("some.access.log")
    logger.addHandler(Keep())
    logger.propagate = False
    logger.warning('"GET %s"', "/ws?clientId=a&token=s3cret")
    assert seen == ['"GET /ws?clientId=a&token=***"']
