"""`comfyc serve --ray`: two Ray Serve replicas on loopback share one queue and history, and no
one process holds anything accepted that its death would lose (issue #20, item 4).

One Ray deployment for the module (replicas run the session's compiled artifact):

* prompts are queued from concurrent clients; while both replicas run prompts, one replica's
  process is killed: every prompt whose POST was answered 200 still finishes (another replica
  takes over the dead one's lease), each with its own output file;
* prompts are queued, and the hub actor's process — the one that holds the queue, the leases
  and the history — is killed mid-load while clients keep posting: Ray restarts it, it reads
  its store, and every accepted prompt finishes exactly once (one success in the history,
  one output file, first attempt), including those posted while the hub was down.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, start_server, stop_server, workflow

pytest.importorskip("ray.serve")


def _request(server: Server, method: str, path: str, body=None):  # type: ignore[no-untyped-def]
    """A request that treats a connection dropped by a dying process as a 503."""
    try:
        return server.request(method, path, body)
    except (urllib.error.URLError, ConnectionError, OSError):
        return 503, None


@pytest.fixture(scope="module")
def ray_server(artifact: Path, serve_cache: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`comfyc serve --ray --replicas 2` on the session cache (its artifact is compiled)."""
    srv = start_server(tmp_path_factory.mktemp("ray"), serve_cache, "--ray", "--replicas",
                       "2", "--lease-s", "3", "--no-preload", ready_timeout=180)
    try:
        yield srv
    finally:
        stop_server(srv)


def _replica_pids(server: Server) -> set[int]:
    pids: set[int] = set()
    end = time.monotonic() + 60
    while len(pids) < 2 and time.monotonic() < end:
        status, stats = _request(server, "GET", "/system_stats")
        if status == 200:
            pids.add(stats["system"]["comfyc"]["replica_pid"])
        time.sleep(0.1)
    assert len(pids) == 2, "requests did not reach two replicas"
    return pids


def _submit_all(server: Server, prompts: list[dict[str, Any]], clients: int = 4) -> list[str]:
    """Post prompts from concurrent clients; the ids of those answered 200, in order."""
    accepted: dict[int, str] = {}
    lock = threading.Lock()

    def client(start: int) -> None:
        for index in range(start, len(prompts), clients):
            status, answer = _request(server, "POST", "/prompt", {"prompt": prompts[index]})
            if status == 200:
                with lock:
                    accepted[index] = answer["prompt_id"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return [accepted[i] for i in sorted(accepted)]


def _wait_entries(server: Server, ids: list[str], timeout: float = 180) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    end = time.monotonic() + timeout
    for prompt_id in ids:
        while prompt_id not in entries and time.monotonic() < end:
            status, found = _request(server, "GET", f"/history/{prompt_id}")
            if status == 200 and found:
                entries[prompt_id] = found[prompt_id]
            else:
                time.sleep(0.3)
        assert prompt_id in entries, f"accepted prompt {prompt_id} was lost:\n" + \
            server.log.read_text()[-3000:]
    return entries


def _wait_running(server: Server, count: int) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        status, queue = _request(server, "GET", "/queue")
        if status == 200 and len(queue["queue_running"]) >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"{count} prompts never ran at the same time")


def test_no_accepted_prompt_is_lost_or_run_twice(ray_server: Server) -> None:
    """A replica killed mid-load, then the hub: every accepted prompt finishes, once.

    NOTE: one test for both, so that one Ray cluster serves them whichever pytest-xdist
    worker runs it (a module fixture is per worker).
    """
    _replica_dies(ray_server)
    _hub_dies(ray_server)


def _replica_dies(ray_server: Server) -> None:
    """8 prompts over 2 replicas; one replica is killed mid-load; all 8 succeed."""
    pids = _replica_pids(ray_server)
    accepted = _submit_all(ray_server, [workflow(seed=500 + i, steps=40) for i in range(8)])
    assert len(accepted) == 8
    _wait_running(ray_server, 2)
    os.kill(min(pids), signal.SIGKILL)

    entries = _wait_entries(ray_server, accepted)
    files, workers, attempts = set(), set(), []
    for entry in entries.values():
        assert entry["status"]["status_str"] == "success", entry["status"]
        (image,) = entry["outputs"]["7"]["images"]
        path = ray_server.output_dir / image["subfolder"] / image["filename"]
        assert path.is_file()
        files.add(path)
        workers.add(entry["comfyc"]["worker"])
        attempts.append(entry["comfyc"]["attempt"])
    print(f"attempts per prompt: {attempts} (2 = taken over from the killed replica)")
    assert len(files) == 8
    assert len(workers) >= 2, "both replicas ran prompts"


def _hub_dies(ray_server: Server) -> None:
    """The hub actor's process is killed with prompts running, pending and arriving: Ray
    restarts it from its store; every accepted prompt finishes exactly once."""
    status, stats = _request(ray_server, "GET", "/system_stats")
    assert status == 200
    hub_pid = stats["system"]["comfyc"]["hub_pid"]

    def prompt(index: int) -> dict[str, Any]:
        body = workflow(seed=900 + index, steps=60)
        body["7"]["inputs"]["filename_prefix"] = f"hubkill/p{index}"
        return body

    accepted = _submit_all(ray_server, [prompt(i) for i in range(8)])
    assert len(accepted) == 8
    _wait_running(ray_server, 1)
    late: list[str] = []
    poster = threading.Thread(target=lambda: late.extend(
        _submit_all(ray_server, [prompt(i) for i in range(8, 12)], clients=2)))
    os.kill(hub_pid, signal.SIGKILL)
    killed = time.monotonic()
    poster.start()
    poster.join(180)
    accepted += late
    assert len(late) >= 1, "no prompt was accepted while the hub restarted"

    entries = _wait_entries(ray_server, accepted)
    recovered_after = time.monotonic() - killed
    status, stats = _request(ray_server, "GET", "/system_stats")
    assert stats["system"]["comfyc"]["hub_pid"] != hub_pid, "the hub was not restarted"
    for prompt_id, entry in entries.items():
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert entry["comfyc"]["attempt"] == 1, (prompt_id, entry["comfyc"])
    # Exactly once: one output file per accepted prompt, none written twice.
    folder = ray_server.output_dir / "hubkill"
    prefixes = [entry["prompt"][2]["7"]["inputs"]["filename_prefix"].split("/")[1]
                for entry in entries.values()]
    assert len(set(prefixes)) == len(accepted)
    for prefix in prefixes:
        assert len(list(folder.glob(f"{prefix}_*.png"))) == 1, prefix
    assert len(list(folder.glob("*.png"))) == len(accepted)
    status, queue = _request(ray_server, "GET", "/queue")
    assert queue == {"queue_running": [], "queue_pending": []}
    print(f"hub killed with {len(accepted) - len(late)} prompts queued and {len(late)} posted "
          f"while it restarted; all {len(accepted)} finished once within "
          f"{recovered_after:.1f} s ({stats['system']['comfyc']['recovered']})")
