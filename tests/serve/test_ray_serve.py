"""`comfyc serve --ray`: two Ray Serve replicas on loopback share one queue and history.

Prompts are queued from concurrent clients; while both replicas are running prompts, one
replica's process is killed. Every prompt whose POST was answered 200 must still finish
(another replica takes over the dead one's lease), each with its own output file.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
from pathlib import Path

import pytest

from .conftest import Server, start_server, stop_server, workflow

pytest.importorskip("ray.serve")


def _request(server: Server, method: str, path: str, body=None):  # type: ignore[no-untyped-def]
    """A request that treats a connection dropped by a dying replica as a 503."""
    try:
        return server.request(method, path, body)
    except (urllib.error.URLError, ConnectionError, OSError):
        return 503, None


def test_two_replicas_lose_no_accepted_prompt(server: Server, serve_cache: Path,
                                              tmp_path: Path) -> None:
    """8 prompts over 2 replicas; one replica is killed mid-load; all 8 succeed."""
    # The session server compiles the workflow's shape into the shared cache (once), while
    # Ray starts.
    body = server.request("POST", "/prompt", {"prompt": workflow(seed=70)})[1]
    ray_server = start_server(tmp_path, serve_cache, "--ray", "--replicas", "2",
                              "--lease-s", "3", ready_timeout=180)
    try:
        server.wait_history(body["prompt_id"])
        pids: set[int] = set()
        end = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < end:
            status, stats = _request(ray_server, "GET", "/system_stats")
            if status == 200:
                pids.add(stats["system"]["comfyc"]["replica_pid"])
            time.sleep(0.1)
        assert len(pids) == 2, "requests did not reach two replicas"

        accepted: list[str] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            for k in range(2):
                status, answer = _request(ray_server, "POST", "/prompt", {
                    "prompt": workflow(seed=500 + 2 * index + k, steps=40)})
                if status == 200:
                    with lock:
                        accepted.append(answer["prompt_id"])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(accepted) == 8

        end = time.monotonic() + 60
        while time.monotonic() < end:
            status, queue = _request(ray_server, "GET", "/queue")
            if status == 200 and len(queue["queue_running"]) == 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the two replicas never ran prompts at the same time")
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)

        files, workers, attempts = set(), set(), []
        end = time.monotonic() + 120
        for prompt_id in accepted:
            entry = None
            while entry is None and time.monotonic() < end:
                status, found = _request(ray_server, "GET", f"/history/{prompt_id}")
                entry = found.get(prompt_id) if status == 200 and found else None
                if entry is None:
                    time.sleep(0.3)
            assert entry is not None, f"accepted prompt {prompt_id} was lost:\n" + \
                ray_server.log.read_text()[-3000:]
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
    finally:
        stop_server(ray_server)
