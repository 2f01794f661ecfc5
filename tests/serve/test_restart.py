"""kill -9 mid-queue: every accepted prompt finishes after the restart (issue #19, item 8).

A real `comfyc serve` (the session's compiled artifact in its cache) is given ten prompts,
killed with SIGKILL while it works through them, and started again on the same cache folder
and port. The new server takes over the prompts the dead one had accepted — the one it was
running first — and runs them; ``/history`` and ``/comfyc/prompts/{id}`` tell each client what
became of its prompt.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .conftest import Server, free_port, start_server, stop_server, workflow

PROMPTS = 10
STEPS = 60


def _finished(server: Server, ids: list[str]) -> list[str]:
    history = server.request("GET", "/history")[1]
    return [pid for pid in ids if pid in history]


def test_prompts_accepted_before_kill_9_finish_after_restart(artifact: Path, serve_cache: Path,
                                                             tmp_path: Path) -> None:
    """10 prompts, SIGKILL after two finished: all 10 succeed, the rest after the restart."""
    port = free_port()  # The shared cache holds the compiled artifact (the fixture).
    first = start_server(tmp_path, serve_cache, port=port)
    try:
        ids = []
        for seed in range(PROMPTS):
            status, body = first.request("POST", "/prompt",
                                         {"prompt": workflow(seed=300 + seed, steps=STEPS)})
            assert status == 200, body
            ids.append(body["prompt_id"])
        end = time.monotonic() + 120
        while len(_finished(first, ids)) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        running = [item[1] for item in first.request("GET", "/queue")[1]["queue_running"]]
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
    finally:
        stop_server(first)
    old_pid = first.process.pid

    second = start_server(tmp_path, serve_cache, port=port)
    try:
        stats = second.request("GET", "/system_stats")[1]["system"]["comfyc"]
        recovered = stats["recovered"]
        entries = {pid: second.wait_history(pid, timeout=180) for pid in ids}
        assert [e["status"]["status_str"] for e in entries.values()] == ["success"] * PROMPTS
        after = [pid for pid, e in entries.items()
                 if not e["comfyc"]["worker"].startswith(f"{old_pid}:")]
        before = [pid for pid in ids if pid not in after]
        assert len(before) >= 2 and after, (before, after)
        assert recovered["queued"] == len(after) and recovered["lost"] == 0
        # The prompt that was running when the server died ran again, first.
        if running and running[0] in after:
            assert entries[running[0]]["comfyc"]["attempt"] == 2
            assert recovered["restarted"] == 1
        assert {second.request("GET", f"/comfyc/prompts/{pid}")[1]["state"]
                for pid in ids} == {"success"}
        assert second.request("GET", "/comfyc/prompts/never-queued")[1]["state"] == "unknown"
        files = {image["filename"] for e in entries.values()
                 for image in e["outputs"]["7"]["images"]}
        assert len(files) == PROMPTS
        print(f"kill -9 after {len(before)} of {PROMPTS} prompts; {len(after)} finished after "
              f"the restart ({recovered})")
    finally:
        stop_server(second)
